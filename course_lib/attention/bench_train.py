"""Attention for training on a GPU: forward and backward of the course's kernels against SDPA's fused backends.

    python -m course_lib.bench attention-train [--name h200_attention_train]
    python -m course_lib.bench attention-train --smoke        (CPU, tiny sizes: checks the code paths only)

Points as in ``bench.py``: bf16, 16k tokens per point (batch = 16384 / seq_len), hidden 2048 (16 heads of 128 or
32 of 64), causal and not, plus grouped-query points (4 query heads per KV head) at 4k and 16k tokens. For each
backend the forward and the backward are timed apart:

* course: ``flash_forward_lse`` (the Hopper kernel on sm_90) and ``flash_backward`` (delta, dK/dV, dQ kernels);
* SDPA: the forward under ``sdpa_kernel(<one backend>)``, and the backward as ``torch.autograd.grad`` of a kept
  graph (``retain_graph``), which runs that backend's backward kernels alone.

FLOPs: the forward counts QKᵀ and PV (4·B·H·T²·d, halved when causal); the backward counts 2.5 times that
(FlashAttention-2's convention: QKᵀ recomputed, dV, dP, dQ, dK). Each time is the median of two passes over
the backends, with their difference as the spread; shares are of the 989 TFLOP/s dense bf16 datasheet peak.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .bench import (HIDDEN, SDPA, SEQ_LENS, SPEC_BF16_TFLOPS, TOKENS, _median_spread, _note, _samples, _sync,
                    attention_flops)

BACKENDS = ("sdpa flash", "sdpa efficient", "sdpa cudnn", "course")
GQA_LENS = (4096, 16384)


def _passes(backend: str, q, k, v, do, causal: bool):
    """(forward, backward) callables for one backend on these tensors; the backward reuses one forward's graph."""
    if backend == "course":
        from .triton_train import flash_backward, flash_forward_lse

        out, lse = flash_forward_lse(q, k, v, causal)
        return (lambda: flash_forward_lse(q, k, v, causal)), (lambda: flash_backward(do, q, k, v, out, lse, causal))
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kind = getattr(SDPBackend, SDPA[backend])
    gqa = q.shape[1] != k.shape[1]
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def forward():
        with sdpa_kernel(kind):  # this backend or an error, never another
            return F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal, enable_gqa=gqa)
    out = forward()
    return forward, (lambda: torch.autograd.grad(out, (qg, kg, vg), do, retain_graph=True))


def train_rows(*, seq_lens=SEQ_LENS, head_dims=(64, 128), backends=BACKENDS, dtype=torch.bfloat16,
               device: str = "cuda", tokens: int = TOKENS, hidden: int = HIDDEN, gqa_lens=GQA_LENS,
               target_s: float = 0.05) -> list[dict]:
    """One row per point and backend: forward and backward ms, TFLOP/s, share of peak and spread, or a note."""
    device = torch.device(device)
    points = [(d, t, causal, 1) for d in head_dims for causal in (True, False) for t in seq_lens]
    points += [(d, t, True, 4) for d in head_dims for t in gqa_lens if (hidden // d) % 4 == 0]
    rows = []
    for d, t, causal, group in points:
        heads, batch = hidden // d, max(1, tokens // t)
        g = torch.Generator(device=device).manual_seed(t + d + group)
        q, do = (torch.randn(batch, heads, t, d, device=device, dtype=dtype, generator=g) for _ in range(2))
        k, v = (torch.randn(batch, heads // group, t, d, device=device, dtype=dtype, generator=g) for _ in range(2))
        flops = attention_flops(batch, heads, t, d, causal)
        base = {"head_dim": d, "seq_len": t, "batch": batch, "heads": heads, "kv_heads": heads // group,
                "causal": causal}
        runs: dict[str, list] = {}
        notes: dict[str, str] = {}
        for p in range(2):  # two passes over the backends: their difference is the spread
            for b in backends:
                if b in notes:
                    continue
                try:
                    fwd, bwd = _passes(b, q, k, v, do, causal)
                    fwd(), bwd()  # compile, warm up
                    _sync(device)
                    runs.setdefault(b, []).append((_samples(fwd, device, target_s=target_s),
                                                   _samples(bwd, device, target_s=target_s)))
                except (RuntimeError, ValueError) as exc:  # a backend that refuses this shape or device
                    notes[b] = _note(exc)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        for b in backends:
            row = {**base, "backend": b}
            if b in notes:
                row["note"] = notes[b]
            else:
                for i, (what, work) in enumerate((("fwd", flops), ("bwd", 2.5 * flops))):
                    seconds, spread = _median_spread([r[i] for r in runs[b]])
                    row[f"{what}_ms"] = seconds * 1e3
                    row[f"{what}_tflops"] = work / seconds / 1e12
                    row[f"{what}_share"] = work / seconds / 1e12 / SPEC_BF16_TFLOPS
                    row[f"{what}_spread"] = spread
                row["note"] = ""
            rows.append(row)
            print({k_: round(v_, 3) if isinstance(v_, float) else v_ for k_, v_ in row.items()}, flush=True)
        del q, k, v, do
    return rows


def ratios(rows: list[dict], other: str, what: str = "bwd") -> list[dict]:
    """The course's forward or backward throughput over another backend's, per point, with the summed spread."""
    by = {(r["head_dim"], r["seq_len"], r["causal"], r["kv_heads"], r["backend"]): r for r in rows}
    out = []
    for (d, t, causal, kv, b), r in by.items():
        o = by.get((d, t, causal, kv, other))
        if b == "course" and r.get(f"{what}_tflops") and o and o.get(f"{what}_tflops"):
            out.append({"head_dim": d, "seq_len": t, "causal": causal, "group": r["heads"] // kv,
                        f"course / {other}": r[f"{what}_tflops"] / o[f"{what}_tflops"],
                        "spread": r[f"{what}_spread"] + o[f"{what}_spread"]})
    return out


def record_attention_train(name: str | None = None, *, smoke: bool = False, directory=None) -> Path:
    """Run the forward+backward benchmark and write data/results/<name>.json (default <gpu>_attention_train)."""
    from ..core.results import save_result

    started = time.perf_counter()
    if smoke:  # no CUDA needed: the course rows are refused with a note, SDPA's run on the CPU
        sizes = dict(seq_lens=(32,), head_dims=(64,), device="cpu", tokens=64, hidden=256, gqa_lens=(32,),
                     target_s=0.002)
        name = name or "cpu_attention_train_smoke"
    else:
        from ..core.env import require_cuda
        from ..core.timing import device_slug

        require_cuda("The attention training benchmark")
        sizes = {}
        name = name or f"{device_slug()}_attention_train"
    rows = train_rows(**sizes)
    summary = {"spec_tflops": SPEC_BF16_TFLOPS, "elapsed_s": time.perf_counter() - started}
    for other in ("sdpa flash", "sdpa cudnn"):
        for what in ("fwd", "bwd"):
            summary[f"course_vs_{other.split()[1]}_{what}"] = ratios(rows, other, what)
    path = save_result(name, rows, summary=summary, directory=Path(directory) if directory else None,
                       description="attention forward and backward for training, bf16, 16k tokens per point "
                                   "(batch = 16384 / seq_len), hidden 2048, causal and not, and GQA 4:1: ms, TFLOP/s, "
                                   "share of the dense bf16 peak and spread per backend",
                       command=f"python -m course_lib.bench attention-train --name {name}" + (" --smoke" if smoke else ""))
    print(f"wrote {path} in {summary['elapsed_s']:.0f} s")
    return path
