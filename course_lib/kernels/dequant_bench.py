"""Dequantize-then-matmul against fp16: why 4-bit weights need a fused kernel to be fast.

    python -m course_lib.bench dequant-matmul [--name h200_dequant_matmul]

A 4-bit weight is a quarter of the fp16 bytes, so a decode step (few tokens, memory-bound) could
run up to ~4x faster. Plain PyTorch can't get there: it first unpacks the int32 words, applies
scale and zero point, *writes the full fp16 weight to memory*, and only then calls cuBLAS, which
reads it back. That moves more bytes than fp16 alone. Timed here, both ways, at Llama-3-8B's
decode-step shapes, for two PyTorch versions:

* ``course QuantLinear``: ``course_lib.gptq.qlinear.QuantLinear.forward`` as chapter 03 uses it
  (int64 unpacking, float32 arithmetic, the g_idx gather: readable, not tuned);
* ``lean torch``: the fewest PyTorch ops we know for the same format (int32 shifts on the packed
  words, fp16 arithmetic, groups by reshape instead of a gather).

Each weight matrix comes in enough copies, used in rotation, that the set is 4x the GPU's L2 cache,
so every call reads HBM (the H200's L2 is 60 MB).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..core.timing import device_slug, median_time
from ..core.env import require_cuda
from ..gptq.qlinear import QuantLinear
from ..core.results import save_result

# (name, in_features k, out_features n) of one Llama-3-8B decoder layer (GQA: 8 KV heads of 128)
LLAMA3_8B_LINEARS = (
    ("q_proj", 4096, 4096),
    ("k_proj", 4096, 1024),
    ("v_proj", 4096, 1024),
    ("o_proj", 4096, 4096),
    ("gate_proj", 4096, 14336),
    ("up_proj", 4096, 14336),
    ("down_proj", 14336, 4096),
)
TOKENS = (1, 16)
GROUP_SIZE = 128


def random_quant_linear(k: int, n: int, *, group_size: int = GROUP_SIZE, device="cuda",
                        generator: torch.Generator | None = None) -> QuantLinear:
    """A QuantLinear (4-bit GPTQ format, no bias) filled with random codes, zero points and scales."""
    layer = QuantLinear(k, n, bits=4, group_size=group_size, bias=False, device=device)
    gen = generator or torch.Generator().manual_seed(0)
    layer.qweight.copy_(torch.randint(-2**31, 2**31 - 1, layer.qweight.shape, generator=gen, dtype=torch.int64)
                        .to(torch.int32))
    layer.qzeros.copy_(torch.full(layer.qzeros.shape, 0x77777777, dtype=torch.int32))  # z = 8 (stored as 7)
    layer.scales.copy_((torch.rand(layer.scales.shape, generator=gen) * 0.01 + 0.001).to(torch.float16))
    return layer


def lean_dequant_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                        group_size: int = GROUP_SIZE) -> torch.Tensor:
    """y = x W^T with W = scales * (u - z) unpacked from GPTQ's qweight (k/8, n), in few fp16 ops.

    zeros: (G, n) zero points already unpacked (GPTQ's are per group, so they are small).
    Groups are consecutive input rows (no act-order g_idx); the arithmetic is in x's dtype.
    """
    if qweight.shape[0] * 8 % group_size:
        raise ValueError(f"in_features {qweight.shape[0] * 8} is not a multiple of the group size {group_size}.")
    k8, n = qweight.shape
    shifts = torch.arange(0, 32, 4, device=qweight.device, dtype=torch.int32)
    u = (qweight[:, None, :] >> shifts[None, :, None]) & 0xF           # (k/8, 8, n) codes, input row 8i + j
    u = u.reshape(-1, group_size, n).to(x.dtype)                        # (G, group, n)
    w = (u - zeros[:, None, :].to(x.dtype)) * scales[:, None, :].to(x.dtype)  # dequantized, still (G, group, n)
    return x @ w.reshape(k8 * 8, n)                                     # the fp16 weight is written, then read


def _copies(nbytes: int, l2_bytes: int) -> int:
    return max(2, math.ceil(4 * l2_bytes / nbytes))


def dequant_rows(tokens=TOKENS, linears=LLAMA3_8B_LINEARS, *, reps: int = 30, l2_bytes: int = 60 << 20) -> list[dict]:
    """Median time of fp16 cuBLAS, the lean PyTorch path and the course QuantLinear, per shape and token count."""
    require_cuda("The dequantize-then-matmul benchmark")
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, k, n in linears:
        copies = _copies(k * n * 2, l2_bytes)
        dense = [(torch.randn(n, k, generator=gen) / k**0.5).to(device, torch.float16) for _ in range(copies)]
        quant = [random_quant_linear(k, n, device=device, generator=gen) for _ in range(copies)]
        zeros = [q.zero_points().to(torch.float16) for q in quant]
        for m in tokens:
            x = torch.randn(m, k, generator=gen).to(device, torch.float16)
            state = {"i": 0}

            def rotate() -> int:
                state["i"] = (state["i"] + 1) % copies
                return state["i"]

            def fp16() -> None:
                F.linear(x, dense[rotate()])

            def lean() -> None:
                i = rotate()
                lean_dequant_matmul(x, quant[i].qweight, quant[i].scales, zeros[i])

            def course() -> None:
                quant[rotate()](x)

            t_fp16 = median_time(fp16, device, reps=reps, inner=copies)
            t_lean = median_time(lean, device, reps=reps, inner=copies)
            t_course = median_time(course, device, reps=max(5, reps // 3), inner=copies)
            fp16_bytes = k * n * 2 + m * (k + n) * 2
            int4_bytes = k * n // 2 + (k // GROUP_SIZE) * n * 2 + m * (k + n) * 2  # codes + fp16 scales (+ tiny zeros)
            rows.append({
                "linear": name, "k": k, "n": n, "tokens": m, "copies": copies,
                "fp16_us": t_fp16 * 1e6, "lean_us": t_lean * 1e6, "course_us": t_course * 1e6,
                "lean_vs_fp16": t_lean / t_fp16, "course_vs_fp16": t_course / t_fp16,
                "fp16_gbps": fp16_bytes / t_fp16 / 1e9,
                "int4_bound_us": int4_bytes / (fp16_bytes / t_fp16) * 1e6,  # int4 bytes at fp16's achieved bandwidth
            })
            print({k_: round(v, 2) if isinstance(v, float) else v for k_, v in rows[-1].items()}, flush=True)
        del dense, quant, zeros
        torch.cuda.empty_cache()
    return rows


def layer_summary(rows: list[dict]) -> list[dict]:
    """Per token count: the whole decoder layer's seven matmuls added up, and the ratios."""
    out = []
    for m in sorted({r["tokens"] for r in rows}):
        sel = [r for r in rows if r["tokens"] == m]
        fp16, lean, course = (sum(r[c] for r in sel) for c in ("fp16_us", "lean_us", "course_us"))
        bound = sum(r["int4_bound_us"] for r in sel)
        out.append({"tokens": m, "fp16_us": fp16, "lean_us": lean, "course_us": course,
                    "lean_vs_fp16": lean / fp16, "course_vs_fp16": course / fp16,
                    "int4_bound_us": bound, "fp16_vs_int4_bound": fp16 / bound})
    return out


def record_dequant_matmul(name: str | None = None, reps: int = 30) -> None:
    """Run dequant_rows on this GPU and save data/results/<gpu>_dequant_matmul.json."""
    require_cuda("The dequantize-then-matmul benchmark")
    name = name or f"{device_slug()}_dequant_matmul"
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = dequant_rows(reps=reps)
    layer = layer_summary(rows)
    path = save_result(
        name, rows,
        description=("Llama-3-8B decode-step linears (one layer's seven), fp16 cuBLAS vs 4-bit GPTQ-format weights "
                     "(group 128) dequantized in PyTorch then multiplied (lean: int32 shifts + fp16; course: "
                     "QuantLinear.forward), weights in rotation over 4x the L2, median of CUDA-event samples"),
        command=f"python -m course_lib.bench dequant-matmul --name {name}",
        summary={"layer": layer})
    print(f"wrote {path}")
    for row in layer:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
