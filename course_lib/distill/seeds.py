"""Is logit KD's gain larger than the seed-to-seed spread? CE-only and logit-KD students over several seeds.

    python -m course_lib.bench distill --part seeds --seeds 0 1 2     # a GPU: data/results/<gpu>_distill_seeds.json

A seed fixes the student's initialisation, the order of its training windows and its dropout, and
the CE and KD students of one seed share all three: each seed is a paired comparison. The chapter's
one definition of the gain is on the best checkpoint (the evaluation with the lowest validation loss):

    gain = 1 - best val ppl (logit KD) / best val ppl (CE only)

The students are tiny (2.2M parameters), so one training keeps an H200 busy for only a fraction of the
time: it is bound by Python launching kernels. ``seed_rows`` therefore trains every (seed, run) in its
own process, all on the same GPU at once (``workers`` at a time). On CPU it runs them one after another.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace

import torch

from ..lm.perplexity import FAST, Protocol, perplexity
from ..lm.tokens import token_stream
from .experiments import PROFILES, RUNS
from .student import new_student
from .trainer import CorpusWindows, DistillConfig, make_eval_set, train_student

_LOADED: dict = {}  # what train_seed_run loaded in this process, reused by its next job
SEED_RUNS = ("CE on the corpus", "logit KD on the corpus")  # the two runs of section 3 whose gap is the KD gain
CE, KD = SEED_RUNS


def _device(device) -> torch.device:
    """A torch.device from a name, None (CUDA when there is one) or a torch.device."""
    from ..core.env import choose_device

    return device if isinstance(device, torch.device) else choose_device(device)


def seed_config(profile: str = "large", seed: int = 0, steps: int | None = None) -> DistillConfig:
    """The profile's training settings with `seed`; `steps` (optional) shortens the run, scaling the
    warm-up and the evaluation interval with it (the cosine schedule then ends at the new last step)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}.")
    cfg = replace(PROFILES[profile]["train"], seed=seed)
    if steps is not None and steps != cfg.steps:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}.")
        scale = steps / cfg.steps
        cfg = replace(cfg, steps=steps, warmup=max(1, round(cfg.warmup * scale)),
                      eval_every=max(1, round(cfg.eval_every * scale)))
    return cfg


def train_seed_run(seed: int, run: str, profile: str = "large", *, steps: int | None = None, device=None,
                   test_tokens: int | None = None, threads: int | None = None, progress: bool = False) -> dict:
    """Train one student (`run`: one of SEED_RUNS) with `seed`; score its best and final checkpoints.

    Returns one row: best and final validation perplexity, the step of the best, test perplexity
    (course protocol, ``FAST``: test split, first 16,384 tokens) of both checkpoints, seconds, and the
    evaluation log. A top-level function, so that a worker process can run it.
    """
    from ..lm.models import load_model

    if run not in SEED_RUNS:
        raise ValueError(f"run must be one of {SEED_RUNS}, got {run!r}.")
    if threads is not None:
        torch.set_num_threads(threads)
    device = _device(device)
    cfg = seed_config(profile, seed, steps)
    protocol = FAST if test_tokens is None else Protocol(max_tokens=test_tokens)
    key = (str(device), cfg.seq_len, PROFILES[profile]["eval_tokens"])
    if key not in _LOADED:  # once per process: the teacher, the token streams, the evaluation windows
        teacher, tok = load_model(device=device, dtype=torch.float32)  # bf16 autocast on CUDA, as in section 3
        train_ids, val_ids = token_stream("train", tok), token_stream("validation", tok)
        _LOADED.clear()
        _LOADED[key] = teacher, tok, train_ids, make_eval_set(val_ids, cfg.seq_len, key[2], teacher)
    teacher, tok, train_ids, evalset = _LOADED[key]
    student = new_student(tok, seed=seed, device=device)
    use_logits = RUNS[run][1]  # both runs train on windows of the corpus
    result = train_student(student, CorpusWindows(train_ids, cfg.batch_size, cfg.seq_len), cfg,
                           teacher=teacher if use_logits else None, evalset=evalset, name=f"{run}, seed {seed}",
                           progress=progress, keep_best=True)
    test_final = perplexity(student, tok, protocol).ppl
    student.load_state_dict(result.best_state)
    test_best = perplexity(student, tok, protocol).ppl
    return {"seed": seed, "run": run, "best val ppl": math.exp(result.best["val_loss"]),
            "final val ppl": math.exp(result.final["val_loss"]), "best step": result.best["step"],
            "test ppl (best)": test_best, "test ppl (final)": test_final, "steps": cfg.steps,
            "seconds": result.seconds, "log": result.log}


def seed_rows(seeds=(0, 1, 2), runs=SEED_RUNS, profile: str = "large", *, steps: int | None = None, device=None,
              workers: int | None = None, test_tokens: int | None = None, progress: bool = True) -> list[dict]:
    """train_seed_run for every (seed, run), in that order.

    workers: how many trainings run at once, each in its own process (spawned: CUDA cannot be
    forked), all on the same device. Default: all of them on CUDA, one at a time (in this process)
    on CPU, where the trainings would only compete for the same cores.
    """
    seeds, runs = list(seeds), list(runs)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"give one or more distinct seeds, got {seeds}.")
    jobs = [(s, r) for s in seeds for r in runs]
    kind = _device(device).type
    workers = (len(jobs) if kind == "cuda" else 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}.")
    kw = dict(profile=profile, steps=steps, device=kind, test_tokens=test_tokens)
    t0 = time.perf_counter()
    if workers == 1:
        rows = [train_seed_run(s, r, progress=progress, **kw) for s, r in jobs]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # a few CPU threads per worker: the host's cores are shared by all of them
        threads = max(1, (mp.cpu_count() or 2) // workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(train_seed_run, s, r, threads=threads, **kw) for s, r in jobs]
            rows = []
            for (s, r), f in zip(jobs, futures):
                rows.append(f.result())
                if progress:
                    print(f"seed {s}, {r}: best val ppl {rows[-1]['best val ppl']:.4g} at step {rows[-1]['best step']}, "
                          f"{time.perf_counter() - t0:.0f} s since the start", flush=True)
    return rows


def _mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(rows: list[dict]) -> dict:
    """Mean and sd over seeds of each run's numbers, and the per-seed (paired) KD gain.

    gain = 1 - best val ppl (KD) / best val ppl (CE): the chapter's one definition. Also the same
    ratio at the final checkpoints and on the test split (best checkpoints), for comparison.
    """
    by_run: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"], {})[r["seed"]] = r
    missing = [run for run in SEED_RUNS if run not in by_run]
    if missing:
        raise ValueError(f"the rows hold no {missing}: the gain compares {CE!r} with {KD!r}.")
    seeds = sorted(set(by_run[CE]) & set(by_run[KD]))
    if not seeds:
        raise ValueError("no seed has both a CE and a KD row; nothing to pair.")
    keys = ("best val ppl", "final val ppl", "best step", "test ppl (best)", "test ppl (final)")
    out = {"seeds": seeds, "runs": {run: {k: _mean_sd([by_run[run][s][k] for s in seeds]) for k in keys}
                                    for run in SEED_RUNS}}
    for label, key in (("gain", "best val ppl"), ("gain, final checkpoints", "final val ppl"),
                       ("gain, test split", "test ppl (best)")):
        per_seed = [1 - by_run[KD][s][key] / by_run[CE][s][key] for s in seeds]
        out[label] = {"per_seed": per_seed, **_mean_sd(per_seed)}
    return out


def record_seeds(name: str | None = None, profile: str = "large", *, seeds=(0, 1, 2), steps: int | None = None,
                 device=None, workers: int | None = None, test_tokens: int | None = None, directory=None,
                 progress: bool = True):
    """Run seed_rows and save rows and summary to data/results/<device>_distill_seeds.json; returns the path."""
    from ..core.timing import device_slug
    from ..core.results import save_result

    device = _device(device)
    name = name or ("cpu" if device.type == "cpu" else device_slug()) + "_distill_seeds"
    if workers is None:  # seed_rows' default, written down in the summary
        workers = len(seeds) * len(SEED_RUNS) if device.type == "cuda" else 1
    t0 = time.perf_counter()
    rows = seed_rows(seeds, profile=profile, steps=steps, device=device, workers=workers, test_tokens=test_tokens,
                     progress=progress)
    cfg = seed_config(profile, 0, steps)
    protocol = FAST if test_tokens is None else Protocol(max_tokens=test_tokens)
    summary = {"profile": profile, "train": {k: v for k, v in cfg.__dict__.items() if k != "seed"},
               "tokens_per_run": cfg.tokens, "eval_tokens": PROFILES[profile]["eval_tokens"],
               "test_protocol": protocol.describe(), "workers": workers, "seconds": time.perf_counter() - t0,
               "curves": {f"{r['run']}, seed {r['seed']}": r["log"] for r in rows}, **summarize(rows)}
    rows = [{k: v for k, v in r.items() if k != "log"} for r in rows]
    seeds_text = " ".join(str(s) for s in seeds)
    command = f"python -m course_lib.bench distill --profile {profile} --part seeds --seeds {seeds_text}"
    if steps is not None:
        command += f" --steps {steps}"
    path = save_result(name, rows, summary=summary, directory=directory, command=command,
                       description=(f"Chapter 08: the CE-only and logit-KD students of section 3, {cfg.steps} steps x "
                                    f"{cfg.batch_size} x {cfg.seq_len} tokens, once per seed ({seeds_text}); best and "
                                    f"final validation perplexity ({PROFILES[profile]['eval_tokens']} tokens), the step "
                                    f"of the best, test perplexity ({protocol.describe()}) of both checkpoints."))
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def seed_table(summary: dict) -> list[dict]:
    """One row per run for print_table: each number as 'mean ± sd' over the seeds (the summary of summarize)."""
    from ..core.tables import fmt

    def cell(stat: dict) -> str:
        return f"{fmt(stat['mean'])} ± {fmt(stat['sd'], 2)}"

    return [{"run": run, **{key: cell(summary["runs"][run][key])
                            for key in ("best val ppl", "final val ppl", "test ppl (best)", "best step")}}
            for run in SEED_RUNS]
