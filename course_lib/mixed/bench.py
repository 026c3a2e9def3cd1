"""Chapter 06's recorded CPU experiment: perplexity against bits per weight, uniform GPTQ against the allocator.

    python -m course_lib.bench mixed [--models course-model smollm2-135m] [--seeds 0 1 2] [--threads 2]

For each model and calibration seed: the sensitivity of every linear layer at every setting, scored two ways
(measure with kl_tokens): EXL2's relative output error of the layer, and the KL divergence of the whole model's
output with that one layer quantized. Then, with GPTQ and perplexity on the course protocol:
* uniform GPTQ at each bit width (2, 3, 4, 5, 6, 8) with groups of 128 (SmolLM2: 64; first seed only);
* the allocator (dynamic programming) on each score at 3.0, 3.5, 4.0, 4.65 and 5.0 bpw (first seed only);
* at the bits per weight of uniform 3- and 4-bit: uniform and both allocators, for every seed: the spread over
  seeds says whether a difference is real.
FAST perplexity for the bundled model; the first `smollm2_tokens` test tokens for SmolLM2-135M (its weights are
de-quantized Q4_1 values), measured with groups of 64 only (576 inputs: 128 does not divide), one seed, one KL window
and the comparisons at equal size only, to keep the CPU time in bounds (SMOLLM2 below).
Saved as data/results/cpu_mixed.json.
"""

from __future__ import annotations

import statistics
import time

import torch

from .allocate import allocate_annealing, allocate_dp, allocate_greedy, uniform
from .checkpoint import quantize_allocation
from .sensitivity import SETTINGS, Setting, measure

TARGETS = (3.0, 3.5, 4.0, 4.65, 5.0)
BITS = (2, 3, 4, 5, 6, 8)
PAIRED_BITS = (3, 4)                                  # uniform points compared with the allocators at their bpw


def main_group(model) -> int:
    """128 where it divides every linear layer's input size (the bundled model), else 64 (SmolLM2: 576 = 9 x 64)."""
    from ..lm.models import linear_layers

    sizes = {layer.in_features for layer in linear_layers(model).values()}
    return 128 if all(n % 128 == 0 for n in sizes) else 64


def _protocol(name: str, smollm2_tokens: int):
    from ..lm.perplexity import FAST, Protocol

    return FAST if name == "course-model" else Protocol(max_tokens=smollm2_tokens)


SCORES = {"output": "allocator (output error)", "kl": "allocator (KL)"}


def model_rows(name: str, *, seeds=(0, 1, 2), n_calib: int = 32, seq_len: int = 128, n_kl: int = 4,
               smollm2_tokens: int = 4096, settings=None, curve: bool = True) -> tuple[list[dict], dict]:
    """Rows (one per quantized model and seed) and a summary (the first seed's measurement, the solvers' objectives).
    curve=False skips the uniform points other than the compared ones and the allocators at TARGETS."""
    from ..lm import models
    from ..lm.perplexity import perplexity
    from ..lm.tokens import calibration_batches

    model, tok = models.load_model(name, dtype=torch.float32)
    group = main_group(model)
    uniform_settings = [Setting(b, group) for b in BITS]
    paired = [Setting(b, group) for b in PAIRED_BITS]
    settings = settings or (SETTINGS if name == "course-model" else tuple(uniform_settings))
    protocol = _protocol(name, smollm2_tokens)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    float_ppl = perplexity(model, tok, protocol).ppl
    rows: list[dict] = []

    def run(kind: str, allocation, seed: int, calib) -> None:
        model.load_state_dict(state)
        t = time.perf_counter()
        quantize_allocation(model, calib, allocation)
        seconds = time.perf_counter() - t
        rows.append({"model": name, "kind": kind, "target bpw": allocation.target_bpw, "bpw": allocation.bpw,
                     "seed": seed, "perplexity": perplexity(model, tok, protocol).ppl,
                     "objective": allocation.objective, "settings": allocation.counts(), "gptq seconds": seconds})
        print(f"{name} seed {seed} {kind} {allocation.bpw:.4f} bpw: ppl {rows[-1]['perplexity']:.4f}", flush=True)

    summary: dict = {"float perplexity": float_ppl, "protocol": protocol.describe(),
                     "settings": [s.label for s in settings], "kl tokens": [n_kl, seq_len], "curve": curve}
    for seed in seeds:
        calib = calibration_batches(tok, n_calib, seq_len, seed=seed)
        kl_tokens = calibration_batches(tok, n_kl, seq_len, seed=seed, split="validation")
        print(f"{name} seed {seed}: measuring {len(settings)} settings", flush=True)
        model.load_state_dict(state)
        t = time.perf_counter()
        m = measure(model, calib, settings, kl_tokens=kl_tokens)
        views = {"output": m, "kl": m.end_to_end()}
        if seed == seeds[0]:
            summary["measure seconds"] = time.perf_counter() - t
            summary["measurement"] = m.to_json()
            summary["solvers"] = [dict(a.summary(), score=score, counts=a.counts())
                                  for score, view in views.items() for target in TARGETS
                                  for a in (allocate_dp(view, target), allocate_greedy(view, target),
                                            allocate_annealing(view, target))]
            for s in uniform_settings:
                if curve or s in paired:
                    run("uniform", uniform(m, s), seed, calib)
            for score, view in views.items():
                for target in TARGETS if curve else ():
                    run(SCORES[score], allocate_dp(view, target), seed, calib)
        for s in paired:
            u = uniform(m, s)
            if seed != seeds[0]:
                run("uniform", u, seed, calib)
            for score, view in views.items():
                run(SCORES[score] + " at uniform bpw", allocate_dp(view, u.bpw), seed, calib)
    summary["paired"] = paired_summary(rows, paired)
    return rows, summary


def paired_summary(rows: list[dict], paired) -> list[dict]:
    """For each model, uniform setting compared and allocator: the mean over seeds of uniform's and the allocator's
    perplexity, the paired gaps, the spread over seeds, and a verdict (a gap counts when every seed agrees and the
    mean gap exceeds the spread)."""
    out = []
    for model in sorted({r["model"] for r in rows}):
        for s in paired:
            uni = [r for r in rows
                   if r["model"] == model and r["kind"] == "uniform" and list(r["settings"]) == [s.label]]
            if not uni:
                continue
            bpw = uni[0]["bpw"]
            u_ppl = {r["seed"]: r["perplexity"] for r in uni}
            for label in SCORES.values():
                a_ppl = {r["seed"]: r["perplexity"] for r in rows if r["model"] == model
                         and r["kind"] == label + " at uniform bpw" and abs(r["target bpw"] - bpw) < 1e-9}
                seeds = sorted(set(u_ppl) & set(a_ppl))
                if not seeds:
                    continue
                gaps = [u_ppl[k] - a_ppl[k] for k in seeds]
                spread = max(max(u_ppl[k] for k in seeds) - min(u_ppl[k] for k in seeds),
                             max(a_ppl[k] for k in seeds) - min(a_ppl[k] for k in seeds))
                gap = statistics.fmean(gaps)
                verdict = ("one seed: no spread measured" if len(seeds) < 2 else
                           "allocator better" if min(gaps) > 0 and gap > spread else
                           "uniform better" if max(gaps) < 0 and -gap > spread else "tie (within the seed spread)")
                out.append({"model": model, "uniform": s.label, "allocator": label, "bpw": bpw, "seeds": len(seeds),
                            "uniform ppl": statistics.fmean(u_ppl[k] for k in seeds),
                            "allocator ppl": statistics.fmean(a_ppl[k] for k in seeds),
                            "gap (uniform - allocator)": gap, "smallest paired gap": min(gaps),
                            "largest paired gap": max(gaps), "seed spread": spread, "verdict": verdict})
    return out


# SmolLM2 on 2 CPU cores: one end-to-end forward of 128 tokens takes about half a second, so its KL scores use
# one window, one seed, six settings, and only the comparisons at equal size (no full curve).
SMOLLM2 = {"n_kl": 1, "curve": False}


def record(name: str | None = None, *, models=("course-model", "smollm2-135m"), seeds=(0, 1, 2),
           threads: int = 2, smollm2_tokens: int = 4096) -> None:
    """Record `models` into data/results/<name>.json, keeping the rows of any other model already recorded there."""
    from ..core.results import load_result, result_path

    torch.set_num_threads(threads)
    name = name or "cpu_mixed"
    rows, summaries = [], {}
    if result_path(name).exists():
        old = load_result(name)
        rows = [r for r in old.rows if r["model"] not in models]
        summaries = {k: v for k, v in old.summary.items() if k not in models and k != "cpu_threads"}
    command = (f"python -m course_lib.bench mixed --models {' '.join(models)} --seeds {' '.join(map(str, seeds))} "
               f"--threads {threads}")
    for model in models:
        options = {} if model == "course-model" else SMOLLM2
        r, s = model_rows(model, seeds=seeds if model == "course-model" else seeds[:1], smollm2_tokens=smollm2_tokens,
                          **options)
        rows += r
        summaries[model] = {**s, "command": command}
        _save(name, rows, command, threads, summaries)      # after each model: a later failure keeps this one


def _save(name, rows, command, threads, summaries) -> None:
    from ..core.results import save_result

    path = save_result(name, rows, command=command, summary={"cpu_threads": threads, **summaries},
                       description="Chapter 06: GPTQ at one setting everywhere against the course allocator "
                                   "(dynamic programming over the measured sensitivity: EXL2's relative output error "
                                   "or the end-to-end KL divergence) at equal bits per weight, counted as the "
                                   "compressed-tensors checkpoint stores them; 32 x 128 calibration tokens and 4 x 128 "
                                   "KL tokens per seed; SmolLM2-135M (first seed only, groups of 64 only, 1 x 128 KL "
                                   "tokens, the comparisons at equal size only): its weights are de-quantized Q4_1 "
                                   "values")
    print(f"saved {path}")
