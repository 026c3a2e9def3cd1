"""What chapter 01 measures around the formats: the seeds' tables, accumulation, weight memory.

The seeds' data-type tables are transcribed here verbatim (their claims, as text and as the
number the text states) so a notebook can put each claim beside its measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

# Seed 003, 6.2.1 量化基础, table 精度对比: format -> (位数, 范围, 精度, 用途) as written.
SEED_003 = {
    "fp32": {"位数": 32, "范围": "±3.4 × 10^38", "range": 3.4e38, "精度": "7位小数", "digits": 7, "用途": "训练"},
    "fp16": {"位数": 16, "范围": "± 65504", "range": 65504.0, "精度": "3位小数", "digits": 3, "用途": "训练/推理"},
    "bf16": {"位数": 16, "范围": "±3.4 × 10^38", "range": 3.4e38, "精度": "2位小数", "digits": 2, "用途": "训练"},
    "int8": {"位数": 8, "范围": "-128~127", "range": 127.0, "min": -128.0, "精度": "整数", "用途": "推理"},
    "int4": {"位数": 4, "范围": "-8~7", "range": 7.0, "min": -8.0, "精度": "整数", "用途": "推理"},
}

# Seed 004, 理论知识 → 常见的数据类型: 位宽, 符号/指数/尾数位, 十进制有效数字, 动态范围, 相对内存.
SEED_004 = {
    "fp64": {"bits": 64, "s/e/m": "1/11/52", "十进制有效数字": "15-17位", "digits": (15, 17), "动态范围": 308, "相对内存": 8},
    "fp32": {"bits": 32, "s/e/m": "1/8/23", "十进制有效数字": "6-7位", "digits": (6, 7), "动态范围": 38, "相对内存": 4},
    "bf16": {"bits": 16, "s/e/m": "1/8/7", "十进制有效数字": "2-3位", "digits": (2, 3), "动态范围": 38, "相对内存": 2},
    "fp16": {"bits": 16, "s/e/m": "1/5/10", "十进制有效数字": "3-4位", "digits": (3, 4), "动态范围": 5, "相对内存": 2},
    "fp8_e4m3fn": {"bits": 8, "s/e/m": "1/4/3", "十进制有效数字": "~1位", "digits": (0.5, 1.5), "动态范围": 2,
                   "相对内存": 1},
    "fp8_e5m2": {"bits": 8, "s/e/m": "1/5/2", "十进制有效数字": "<1位", "digits": (0, 1), "动态范围": 4, "相对内存": 1},
    "int8": {"bits": 8, "s/e/m": "-", "十进制有效数字": "2-3位", "digits": (2, 3), "动态范围": 2, "相对内存": 1},
    "int4": {"bits": 4, "s/e/m": "-", "十进制有效数字": "1位", "digits": (0.5, 1.5), "动态范围": 1, "相对内存": 0.5},
}

# Seed 002, §2 数值精度概览: bytes per parameter (每参数显存占用).
SEED_002_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


# ---------------------------------------------------------------------------------------------
# Accumulating many small numbers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SumTrace:
    """A running sum of `n` copies of one value, accumulated in one dtype."""

    dtype: str
    n: int
    steps: list[int]  # where the partial sums were recorded
    partial: list[float]
    final: float
    stalled_at: int | None  # first step whose addition left the sum unchanged (None: never)
    stall_value: float | None


def running_sum(value: float, n: int, dtype, *, record_every: int = 100, device=None) -> SumTrace:
    """Add `value` to an accumulator `n` times, one addition at a time, rounding to `dtype` each time."""
    import torch

    acc = torch.zeros((), dtype=dtype, device=device)
    x = torch.tensor(value, dtype=dtype, device=device)
    steps, partial, stalled_at, stall_value = [0], [0.0], None, None
    for i in range(1, n + 1):
        new = acc + x  # the exact sum, rounded to the nearest value of `dtype`
        if stalled_at is None and bool(new == acc):
            stalled_at, stall_value = i, float(acc)
        acc = new
        if i % record_every == 0 or i == n:
            steps.append(i)
            partial.append(float(acc))
    return SumTrace(str(dtype).replace("torch.", ""), n, steps, partial, float(acc), stalled_at, stall_value)


# ---------------------------------------------------------------------------------------------
# Weight memory
# ---------------------------------------------------------------------------------------------


def bits_per_param(bits: float, group_size: int | None = None, scale_bits: float = 16) -> float:
    """Storage bits per weight: the code plus one `scale_bits` scale shared by each group of weights."""
    if group_size is not None and group_size <= 0:
        raise ValueError(f"group_size must be a positive number of weights per scale; got {group_size}.")
    return bits + (scale_bits / group_size if group_size else 0.0)


def nf4_bits_per_param(block: int = 64, double_quant: bool = True, block2: int = 256) -> float:
    """NF4 as QLoRA stores it: 4-bit codes plus one absmax per `block` weights.

    Without double quantization each absmax is fp32: 4 + 32/64 = 4.5 bits. With it, the absmaxes
    are themselves quantized to 8 bits, in blocks of `block2` with one fp32 scale each:
    4 + 8/64 + 32/(64·256) ≈ 4.127 bits.
    """
    if not double_quant:
        return 4 + 32 / block
    return 4 + 8 / block + 32 / (block * block2)


def weight_gb(n_params: float, bits: float) -> float:
    """Weight memory in GB (10^9 bytes)."""
    return n_params * bits / 8 / 1e9


def bnb_nf4_storage(weights, *, double_quant: bool = True) -> dict[str, float]:
    """Measured: bits per parameter that bitsandbytes stores for these tensors in NF4, by part.

    Parts: the packed 4-bit codes; the absmax per 64 weights (fp32, or 8-bit codes with double
    quantization); the second-level fp32 scales and offset; the per-tensor lookup tables (the
    16 NF4 values and, with double quantization, the 256-entry 8-bit code). Needs bitsandbytes.
    """
    from . import import_bitsandbytes_functional

    bnbf = import_bitsandbytes_functional()
    parts = {"codes": 0, "absmax": 0, "second-level scales": 0, "per-tensor tables": 0}
    n = 0
    for w in weights:
        packed, state = bnbf.quantize_4bit(w.detach().float(), blocksize=64, quant_type="nf4",
                                           compress_statistics=double_quant)
        nbytes = {"codes": [packed], "absmax": [state.absmax], "per-tensor tables": [state.code]}
        if state.nested:
            nbytes["second-level scales"] = [state.state2.absmax, state.offset]
            nbytes["per-tensor tables"].append(state.state2.code)
        for part, tensors in nbytes.items():
            parts[part] += sum(t.numel() * t.element_size() for t in tensors)
        n += w.numel()
    bits = {part: 8 * b / n for part, b in parts.items()}
    bits["total"] = sum(bits.values())
    return bits
