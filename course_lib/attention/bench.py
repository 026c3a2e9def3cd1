"""Attention forward benchmarks on a GPU: naive PyTorch, SDPA's three backends and the course kernel.

    python -m course_lib.bench attention [--name h100_attention]

As in the FlashAttention-2 paper's benchmarks, the batch shrinks as the sequence grows so that every
point holds 16k tokens (batch = 16384 / seq_len), with hidden size 2048 (16 heads of 128 or 32 of 64).
Causal FLOPs count the half of the score matrix that is computed: 4 · B · H · T² · d / 2.
"""

from __future__ import annotations

import torch

BACKENDS = ("naive", "sdpa math", "sdpa flash", "sdpa efficient", "course triton")
SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)


def _runner(backend: str, causal: bool):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .reference import naive_attention
    from .triton_flash import flash_attention_triton

    if backend == "naive":
        return lambda q, k, v: naive_attention(q, k, v, causal=causal)
    if backend == "course triton":
        return lambda q, k, v: flash_attention_triton(q, k, v, causal=causal)
    kind = {"sdpa math": SDPBackend.MATH, "sdpa flash": SDPBackend.FLASH_ATTENTION,
            "sdpa efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]

    def run(q, k, v):
        with sdpa_kernel(kind):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run


def attention_rows(*, seq_lens=SEQ_LENS, head_dims=(64, 128), backends=BACKENDS, dtype=torch.bfloat16,
                   causal: bool = True, reps: int = 20) -> list[dict]:
    """One row per (head_dim, seq_len, backend): ms, TFLOP/s and peak memory, or an 'OOM'/'error' note."""
    from ..bench import median_time
    from ..env import require_cuda

    require_cuda("The attention benchmark")
    device = torch.device("cuda")
    rows = []
    for d in head_dims:
        heads = 2048 // d
        for t in seq_lens:
            batch = max(1, 16384 // t)
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v = (torch.randn(batch, heads, t, d, device=device, dtype=dtype, generator=g) for _ in range(3))
            flops = 4 * batch * heads * t * t * d * (0.5 if causal else 1.0)
            for backend in backends:
                fn = _runner(backend, causal)
                row = {"head_dim": d, "seq_len": t, "batch": batch, "heads": heads, "backend": backend}
                try:
                    fn(q, k, v)  # compile / autotune first, so the peak below is the call's own
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    fn(q, k, v)
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated() - base
                    seconds = median_time(lambda: fn(q, k, v), device, reps=reps, warmup=3)
                    row.update(ms=seconds * 1e3, tflops=flops / seconds / 1e12, peak_mib=peak / 2**20, note="")
                except torch.cuda.OutOfMemoryError:
                    row.update(ms=None, tflops=None, peak_mib=None, note="out of memory")
                except RuntimeError as exc:  # e.g. a backend that refuses this shape
                    row.update(ms=None, tflops=None, peak_mib=None, note=str(exc).split("\n")[0][:80])
                torch.cuda.empty_cache()
                rows.append(row)
                print({k_: round(v_, 3) if isinstance(v_, float) else v_ for k_, v_ in row.items()}, flush=True)
            del q, k, v
    return rows


def kernel_vs_flash(rows: list[dict]) -> list[dict]:
    """The course kernel's throughput over SDPA flash's, per head_dim and seq_len."""
    by = {(r["head_dim"], r["seq_len"], r["backend"]): r for r in rows}
    out = []
    for (d, t, backend), r in by.items():
        flash = by.get((d, t, "sdpa flash"))
        if backend == "course triton" and r["tflops"] and flash and flash["tflops"]:
            out.append({"head_dim": d, "seq_len": t, "course TFLOP/s": r["tflops"], "flash TFLOP/s": flash["tflops"],
                        "course / flash": r["tflops"] / flash["tflops"]})
    return out


def record_attention(name: str | None = None) -> None:
    from ..bench import device_slug
    from ..env import require_cuda
    from ..results import save_result

    require_cuda("The attention benchmark")
    name = name or f"{device_slug()}_attention"
    rows = attention_rows()
    summary = {"course_vs_flash": kernel_vs_flash(rows), "dtype": "bfloat16", "causal": True,
               "tokens_per_point": 16384, "hidden": 2048}
    path = save_result(name, rows, description="causal attention forward, bf16, 16k tokens per point (batch = 16384 / "
                       "seq_len), hidden 2048: time (median of 20), TFLOP/s and peak extra memory per backend",
                       summary=summary, command=f"python -m course_lib.bench attention --name {name}")
    print(f"wrote {path}")
    for row in summary["course_vs_flash"]:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
