"""Attention forward benchmarks on a GPU: naive PyTorch, SDPA's four backends and the course's two kernels.

    python -m course_lib.bench attention [--name h200_attention] [--tune quick|full]
    python -m course_lib.bench attention --smoke        (CPU, tiny sizes: checks the code paths, not a result)

As in the FlashAttention-2 paper's benchmarks, the batch shrinks as the sequence grows so that every
point holds 16k tokens (batch = 16384 / seq_len), with hidden size 2048 (16 heads of 128 or 32 of 64);
forward only, causal and non-causal. FLOPs count the two matmuls, 4·B·H·T²·d, halved under a causal
mask (the half that is computed). Q, K, V and O are 64 MiB each, beyond the 50-60 MB L2 of an H100/H200.

Timing: the first call compiles (and autotunes the course kernel); the second measures peak memory and
warms up; then each backend is timed in two passes over all backends (CUDA events around samples of
calls in a row, about 2 ms per sample, at least 3 samples and about 0.05 s per pass; see ``_samples``),
and a row keeps the median of both passes and their spread,
so that a difference smaller than the spread reads as a tie. Each SDPA row runs inside
``sdpa_kernel(<that one backend>)``: PyTorch raises instead of falling back to another backend, and the
summary lists the GPU kernels each backend launched (torch.profiler) as a second check.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

BACKENDS = ("naive", "naive bf16", "sdpa math", "sdpa flash", "sdpa efficient", "sdpa cudnn", "course triton",
            "course hopper")
SDPA = {"sdpa math": "MATH", "sdpa flash": "FLASH_ATTENTION", "sdpa efficient": "EFFICIENT_ATTENTION",
        "sdpa cudnn": "CUDNN_ATTENTION"}
SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
TOKENS, HIDDEN = 16384, 2048
SPEC_BF16_TFLOPS = 989.4  # H100/H200 SXM datasheet: dense bf16 tensor-core peak (1979 is with 2:4 sparsity)


def attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, causal: bool) -> float:
    """4·B·H·T²·d: QKᵀ and PV, 2·T²·d each per head; a causal mask halves the work that is needed."""
    return 4 * batch * heads * seq_len * seq_len * head_dim * (0.5 if causal else 1.0)


def _runner(backend: str, causal: bool):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .reference import naive_attention
    from .triton_flash import flash_attention_triton

    if backend == "naive":  # scores, probabilities and products in float32 (the reference)
        return lambda q, k, v: naive_attention(q, k, v, causal=causal)
    if backend == "naive bf16":  # the same in the inputs' 16-bit dtype: half the bytes per score
        return lambda q, k, v: naive_attention(q, k, v, causal=causal, dtype=None)
    if backend == "course triton":
        return lambda q, k, v: flash_attention_triton(q, k, v, causal=causal)
    if backend == "course hopper":  # the TMA kernel (triton_hopper); refuses other GPUs with a note in the row
        from .triton_hopper import flash_attention_hopper

        return lambda q, k, v: flash_attention_hopper(q, k, v, causal=causal)
    if backend not in SDPA:
        raise ValueError(f"Unknown backend {backend!r}; choose from {BACKENDS}.")
    kind = getattr(SDPBackend, SDPA[backend])

    def run(q, k, v):
        with sdpa_kernel(kind):  # only this backend: PyTorch raises rather than pick another
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _samples(fn, device: torch.device, *, target_s: float, min_reps: int = 3, max_reps: int = 50,
             batch_s: float = 0.002) -> list[float]:
    """Seconds per call, one value per sample: CUDA events (perf_counter on a CPU) around `inner` calls in a row.

    Short calls are issued `inner` at a time (about `batch_s` of work per sample) so that the CPU queues the
    next launch while the GPU runs: the sample measures the GPU's work, and launch overhead only where it
    is longer than the call itself (as in the near-empty call of ``call_floor``).
    """
    def sample(inner: int) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner

    first = sample(1)
    inner = max(1, min(100, int(batch_s / max(first, 1e-7))))
    reps = max(min_reps, min(max_reps, int(target_s / max(first * inner, 1e-7))))
    return [sample(inner) for _ in range(reps)]


def _median_spread(passes: list[list[float]]) -> tuple[float, float]:
    """Seconds per call, the median of every sample of the timing passes, and their spread: the largest pass median
    over the smallest, minus 1 (a difference smaller than that between two rows reads as a tie)."""
    medians = [statistics.median(p) for p in passes]
    return statistics.median([x for p in passes for x in p]), max(medians) / min(medians) - 1


def _note(exc: Exception) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of memory"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"


def attention_rows(*, seq_lens=SEQ_LENS, head_dims=(64, 128), backends=BACKENDS, causal: bool = True,
                   dtype=torch.bfloat16, device: str = "cuda", tokens: int = TOKENS, hidden: int = HIDDEN,
                   target_s: float = 0.05) -> list[dict]:
    """One row per (head_dim, seq_len, backend): ms (median of two passes), spread, TFLOP/s, peak MiB, or a note."""
    device = torch.device(device)
    if device.type == "cuda":
        from ..core.env import require_cuda

        require_cuda("The attention benchmark")
    rows = []
    for d in head_dims:
        heads = hidden // d
        for t in seq_lens:
            batch = max(1, tokens // t)
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v = (torch.randn(batch, heads, t, d, device=device, dtype=dtype, generator=g) for _ in range(3))
            flops = attention_flops(batch, heads, t, d, causal)
            point = {b: {"head_dim": d, "seq_len": t, "batch": batch, "heads": heads, "causal": causal, "backend": b}
                     for b in backends}
            runs: dict[str, list[list[float]]] = {}
            for p in range(2):  # two passes over every backend: their difference is the run-to-run spread
                for b in backends:
                    row = point[b]
                    if "note" in row:
                        continue
                    fn = _runner(b, causal)
                    try:
                        if p == 0:
                            fn(q, k, v)  # compile / autotune, so the peak below is the call's own
                            _sync(device)
                            if device.type == "cuda":
                                torch.cuda.reset_peak_memory_stats()
                                base = torch.cuda.memory_allocated()
                            fn(q, k, v)
                            _sync(device)
                            row["peak_mib"] = ((torch.cuda.max_memory_allocated() - base) / 2**20
                                               if device.type == "cuda" else None)
                            if b == "course triton" and device.type == "cuda":
                                from .triton_flash import last_config

                                cfg = last_config()
                                row["config"] = cfg
                                row["programs"] = -(-t // cfg["BLOCK_M"]) * batch * heads
                        runs.setdefault(b, []).append(_samples(lambda: fn(q, k, v), device, target_s=target_s))
                    except (RuntimeError, ValueError) as exc:  # OOM, or a backend that refuses this shape/device
                        row.update(ms=None, tflops=None, peak_mib=None, note=_note(exc))
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            for b in backends:
                row = point[b]
                if "note" not in row:
                    seconds, spread = _median_spread(runs[b])
                    row.update(ms=seconds * 1e3, spread=spread, tflops=flops / seconds / 1e12,
                               note="")
                rows.append(row)
                print({k_: round(v_, 4) if isinstance(v_, float) else v_ for k_, v_ in row.items()}, flush=True)
            del q, k, v
    return rows


def call_floor(*, backends=BACKENDS, head_dims=(64, 128), dtype=torch.bfloat16, device: str = "cuda",
               seq_len: int = 128, min_reps: int = 10) -> list[dict]:
    """Microseconds per near-empty call (batch 1, one head, seq_len tokens) issued in a row: the fixed cost of a
    call, launch and Python overhead included, which no call of that backend can go under."""
    device = torch.device(device)
    rows = []
    for d in head_dims:
        g = torch.Generator(device=device).manual_seed(1)
        q, k, v = (torch.randn(1, 1, seq_len, d, device=device, dtype=dtype, generator=g) for _ in range(3))
        for b in backends:
            fn = _runner(b, True)
            try:
                for _ in range(3):
                    fn(q, k, v)
                _sync(device)
                us = statistics.median(_samples(lambda: fn(q, k, v), device, target_s=0.05, min_reps=min_reps)) * 1e6
                rows.append({"head_dim": d, "seq_len": seq_len, "backend": b, "us": us, "note": ""})
            except (RuntimeError, ValueError) as exc:
                rows.append({"head_dim": d, "seq_len": seq_len, "backend": b, "us": None, "note": _note(exc)})
    return rows


def kernel_names(*, backends=BACKENDS, head_dim: int = 128, seq_len: int = 4096, dtype=torch.bfloat16) -> dict:
    """{backend: names of the GPU kernels one causal call launched, the longest-running first}, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator(device="cuda").manual_seed(2)
    q, k, v = (torch.randn(1, HIDDEN // head_dim, seq_len, head_dim, device="cuda", dtype=dtype, generator=g)
               for _ in range(3))
    names = {}
    for b in backends:
        fn = _runner(b, True)
        try:
            fn(q, k, v)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn(q, k, v)
                torch.cuda.synchronize()
            spent: dict[str, float] = {}  # GPU microseconds per kernel name, the longest first
            for e in prof.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    spent[e.name] = spent.get(e.name, 0.0) + e.time_range.elapsed_us()
            names[b] = [n[:120] for n in sorted(spent, key=spent.get, reverse=True)]
        except (RuntimeError, ValueError) as exc:
            names[b] = [_note(exc)]
    return names


def course_vs(rows: list[dict], other: str) -> list[dict]:
    """The course kernel's throughput over another backend's, per (causal, head_dim, seq_len), with the noise."""
    by = {(r.get("causal", True), r["head_dim"], r["seq_len"], r["backend"]): r for r in rows}
    out = []
    for (causal, d, t, backend), r in by.items():
        o = by.get((causal, d, t, other))
        if backend.startswith("course") and r.get("tflops") and o and o.get("tflops"):
            out.append({"causal": causal, "head_dim": d, "seq_len": t, "kernel": backend,
                        "course / " + other: r["tflops"] / o["tflops"], "spread": r.get("spread", 0.0) + o.get("spread", 0.0)})
    return out


def record_attention(name: str | None = None, *, tune: str | None = None, smoke: bool = False,
                     directory=None) -> dict:
    """Run the whole benchmark and write data/results/<name>.json (default <gpu>_attention).

    tune: the course kernel's autotuning, 'full' (7 configurations) or 'quick' (2); default: COURSE_FLASH_TUNE.
    smoke: tiny sizes on the CPU (no CUDA needed), to check the code paths; never a result to commit.
    """
    import sys

    from ..core.results import save_result

    started = time.perf_counter()
    if tune is not None:
        if tune not in ("quick", "full"):
            raise ValueError(f"tune must be 'quick' or 'full', got {tune!r}.")
        if "course_lib.attention.triton_flash" in sys.modules:
            raise RuntimeError("Set the tuning before the kernel module is imported (a fresh process).")
        os.environ["COURSE_FLASH_TUNE"] = tune
    tune = "quick" if os.environ.get("COURSE_FLASH_TUNE") == "quick" else "full"
    if smoke:
        sizes = dict(seq_lens=(32, 64), head_dims=(64,), device="cpu", tokens=64, hidden=128, target_s=0.002)
        name = name or "cpu_attention_smoke"
    else:
        from ..core.timing import copy_bandwidth_gbps, device_slug, matmul_tflops
        from ..core.env import require_cuda

        require_cuda("The attention benchmark")
        sizes = {}
        name = name or f"{device_slug()}_attention"
    summary: dict = {"dtype": "bfloat16", "tokens_per_point": sizes.get("tokens", TOKENS),
                     "hidden": sizes.get("hidden", HIDDEN), "tune": tune, "spec_tflops": SPEC_BF16_TFLOPS,
                     "math_sdp_bf16_reduction": torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()}
    if not smoke:
        cuda = torch.device("cuda")
        summary["matmul_tflops"] = matmul_tflops(cuda, 8192, dtype=torch.bfloat16)
        summary["copy_gbps"] = copy_bandwidth_gbps(cuda)
        summary["memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        print(f"roofs: bf16 matmul {summary['matmul_tflops']:.0f} TFLOP/s, copy {summary['copy_gbps']:.0f} GB/s",
              flush=True)
    rows = [r for causal in (True, False) for r in attention_rows(causal=causal, **sizes)]
    summary["floor"] = (call_floor(head_dims=(64,), device="cpu", min_reps=3) if smoke else call_floor())
    summary["kernels"] = {} if smoke else kernel_names()
    for other in ("sdpa flash", "sdpa cudnn"):
        summary["course_vs_" + other.split()[1]] = course_vs(rows, other)
    summary["elapsed_s"] = time.perf_counter() - started
    what = "CPU smoke run, tiny sizes" if smoke else "bf16, 16k tokens per point (batch = 16384 / seq_len), hidden 2048"
    path = save_result(name, rows, summary=summary, directory=Path(directory) if directory else None,
                       description=f"attention forward, causal and not, {what}: ms (median of two timing passes), "
                                   "their spread, TFLOP/s and peak extra memory per backend",
                       command=f"python -m course_lib.bench attention --name {name} --tune {tune}"
                               + (" --smoke" if smoke else ""))
    print(f"wrote {path} in {summary['elapsed_s']:.0f} s")
    return summary
