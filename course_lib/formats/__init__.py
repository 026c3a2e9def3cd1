"""Number formats measured from their bits: decode any code, derive range and precision, check torch.

    decode(0b0_0111_100, "fp8_e4m3fn")      # 1.5: sign, exponent, mantissa -> value
    stats("fp16").max                       # 65504.0, found by decoding the largest finite code
    mismatches_vs_torch("fp8_e4m3fn")       # [] when all 256 codes decode as torch does

A binary float with e exponent bits, m mantissa bits and bias b reads its fields (s, E, M) as

    normal     (E > 0):  (-1)^s * 2^(E - b) * (1 + M / 2^m)
    subnormal  (E = 0):  (-1)^s * 2^(1 - b) * (0 + M / 2^m)

and the formats differ in which codes they take away for infinity and NaN (``SPECIALS``).
Integers are two's complement; NF4 is not a float at all but a table of 16 values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Which codes are not numbers, per convention.
SPECIALS = {
    "ieee": "top exponent field: mantissa 0 is ±inf, any other mantissa is NaN",
    "fn": "finite only: no inf; only S.1111...1 (all exponent and mantissa bits set) is NaN",
    "fnuz": "finite, unsigned zero: no inf, no -0; the -0 code 1000...0 is the only NaN",
    "none": "every code is a finite number (no inf, no NaN)",
}


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, `exp_bits`, `man_bits`, an exponent `bias`."""

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    special: str = "ieee"
    torch_name: str | None = None  # the torch dtype with exactly these bits, if torch has one

    kind = "float"

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    def fields(self, code: int) -> tuple[int, int, int]:
        """(sign, exponent field E, mantissa field M) of a code."""
        code = _check_code(code, self)
        m, e = self.man_bits, self.exp_bits
        return code >> (e + m), (code >> m) & ((1 << e) - 1), code & ((1 << m) - 1)

    def code(self, sign: int, exponent: int, mantissa: int) -> int:
        """The code with these fields (the inverse of `fields`)."""
        return (sign << (self.exp_bits + self.man_bits)) | (exponent << self.man_bits) | mantissa

    def decode(self, code: int) -> float:
        """The value of one code, exactly (a Python float holds every value of these formats)."""
        s, E, M = self.fields(code)
        top = (1 << self.exp_bits) - 1
        all_ones = (1 << self.man_bits) - 1
        if self.special == "fnuz" and code == 1 << (self.bits - 1):
            return math.nan  # the would-be -0 is the NaN
        if self.special == "ieee" and E == top:
            return math.nan if M else (-math.inf if s else math.inf)
        if self.special == "fn" and E == top and M == all_ones:
            return math.nan
        sign = -1.0 if s else 1.0
        if E == 0:  # subnormal: no implicit leading 1, exponent fixed at 1 - bias
            return sign * math.ldexp(M, 1 - self.bias - self.man_bits)
        return sign * math.ldexp((1 << self.man_bits) + M, E - self.bias - self.man_bits)

    def torch_dtype(self):
        import torch

        return getattr(torch, self.torch_name) if self.torch_name and hasattr(torch, self.torch_name) else None


@dataclass(frozen=True)
class IntFormat:
    """A two's-complement signed integer of `bits` bits."""

    name: str
    bits: int
    torch_name: str | None = None
    kind = "int"

    def decode(self, code: int) -> float:
        code = _check_code(code, self)
        return float(code - (1 << self.bits) if code >> (self.bits - 1) else code)  # top bit weighs -2^(bits-1)

    def torch_dtype(self):
        import torch

        return getattr(torch, self.torch_name) if self.torch_name else None


@dataclass(frozen=True)
class CodebookFormat:
    """A lookup table: code i means values[i] (NF4 stores 4-bit indices into 16 values)."""

    name: str
    values: tuple[float, ...]
    kind = "codebook"
    torch_name = None  # torch has no lookup-table dtype

    @property
    def bits(self) -> int:
        return int(math.log2(len(self.values)))

    def decode(self, code: int) -> float:
        return self.values[_check_code(code, self)]

    def torch_dtype(self):
        return None


Format = FloatFormat | IntFormat | CodebookFormat


def nf4_code_book(offset: float | None = None) -> tuple[float, ...]:
    """NF4's 16 values from their definition (QLoRA): quantiles of N(0, 1), normalised to [-1, 1].

    With 16 codes and an exact zero, the positive side gets 8 values and the negative side 7.
    Each side takes evenly spaced probabilities from `offset` down to 1/2 (the median, i.e. 0),
    drops the endpoint 1/2, and maps them through the inverse normal CDF Φ⁻¹. Φ⁻¹(1) = ∞, so the
    outermost probability is `offset` < 1: by default the midpoint of 1 - 1/(2·16) and
    1 - 1/(2·15) (= 0.9677083), the value in the QLoRA authors' code.
    """
    import torch

    if offset is None:
        offset = 0.5 * ((1 - 1 / (2 * 16)) + (1 - 1 / (2 * 15)))
    if not 0.5 < offset < 1:
        raise ValueError(f"offset must lie in (0.5, 1); got {offset}. It is the probability of the outermost quantile.")
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return tuple((values / values.max()).tolist())  # normalise: the largest value is exactly 1


def _make_formats() -> dict[str, Format]:
    fl = FloatFormat
    formats = [
        fl("fp64", 11, 52, 1023, "ieee", "float64"),
        fl("fp32", 8, 23, 127, "ieee", "float32"),
        fl("fp16", 5, 10, 15, "ieee", "float16"),
        fl("bf16", 8, 7, 127, "ieee", "bfloat16"),
        fl("fp8_e4m3fn", 4, 3, 7, "fn", "float8_e4m3fn"),
        fl("fp8_e5m2", 5, 2, 15, "ieee", "float8_e5m2"),
        fl("fp8_e4m3fnuz", 4, 3, 8, "fnuz", "float8_e4m3fnuz"),
        fl("fp8_e5m2fnuz", 5, 2, 16, "fnuz", "float8_e5m2fnuz"),
        fl("fp4_e2m1", 2, 1, 1, "none", None),  # torch.float4_e2m1fn_x2 packs two and can't convert on CPU
        IntFormat("int8", 8, "int8"),
        IntFormat("int4", 4, None),
        CodebookFormat("nf4", nf4_code_book()),
    ]
    return {f.name: f for f in formats}


FORMATS: dict[str, Format] = _make_formats()
ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float64": "fp64",
           "e4m3": "fp8_e4m3fn", "fp8_e4m3": "fp8_e4m3fn", "e5m2": "fp8_e5m2", "e4m3fnuz": "fp8_e4m3fnuz",
           "e5m2fnuz": "fp8_e5m2fnuz", "fp4": "fp4_e2m1", "e2m1": "fp4_e2m1"}


def get_format(fmt: str | Format) -> Format:
    """A format by name ('fp16', 'fp8_e4m3fn', 'nf4', ...) or the format object itself."""
    if isinstance(fmt, (FloatFormat, IntFormat, CodebookFormat)):
        return fmt
    if not isinstance(fmt, str):
        raise TypeError(f"A format is a name like 'fp16' or a FloatFormat; got {type(fmt).__name__}.")
    key = ALIASES.get(fmt.lower(), fmt.lower())
    if key not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}. Known formats: {', '.join(FORMATS)}.")
    return FORMATS[key]


def _check_code(code: int, fmt) -> int:
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"A code is a non-negative int (e.g. 0b00111100); got {type(code).__name__}.")
    if not 0 <= code < 1 << fmt.bits:
        raise ValueError(f"{fmt.name} has {fmt.bits} bits, so a code lies in 0..{(1 << fmt.bits) - 1}; got {code}.")
    return code


def decode(code: int, fmt: str | Format) -> float:
    """The value of bit pattern `code` (an int; the most significant bit is the sign) in `fmt`."""
    return get_format(fmt).decode(code)


def all_values(fmt: str | Format) -> list[float]:
    """Every code's value, in code order (formats of at most 16 bits)."""
    fmt = get_format(fmt)
    if fmt.bits > 16:
        raise ValueError(f"{fmt.name} has 2^{fmt.bits} codes; enumerate only formats of at most 16 bits.")
    return [fmt.decode(c) for c in range(1 << fmt.bits)]


# ---------------------------------------------------------------------------------------------
# Range and precision, found by decoding codes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormatStats:
    """What a format can represent, measured by decoding its codes."""

    name: str
    bits: int
    sign_bits: int
    exp_bits: int | None
    man_bits: int | None
    bias: int | None
    max: float  # largest finite value
    min_normal: float | None  # smallest positive normal (floats only)
    min_subnormal: float  # smallest positive value (the step, for integers)
    eps: float | None  # gap between 1 and the next value up (floats only)
    decimal_digits: float | None  # log10(2^p): p significand bits (floats), magnitude bits (ints)
    has_inf: bool
    has_nan: bool

    @property
    def range_decades(self) -> float:
        """log10(max / smallest positive): how many powers of ten the format spans."""
        return math.log10(self.max) - math.log10(self.min_subnormal)  # the ratio itself overflows for fp64

    def row(self) -> dict[str, object]:
        """The table row notebooks print."""
        return {"format": self.name, "bits": self.bits, "s/e/m": _layout(self), "bias": self.bias,
                "max": self.max, "min normal": self.min_normal, "min subnormal": self.min_subnormal,
                "eps": self.eps, "digits": self.decimal_digits, "inf": self.has_inf, "NaN": self.has_nan}


def _layout(s: FormatStats) -> str:
    return "-" if s.exp_bits is None else f"{s.sign_bits}/{s.exp_bits}/{s.man_bits}"


def _float_stats(f: FloatFormat) -> FormatStats:
    top_e, top_m = (1 << f.exp_bits) - 1, (1 << f.man_bits) - 1
    # The largest finite value is in the top two exponent fields with one of the top two mantissas:
    # IEEE loses the whole top field to inf/NaN, "fn" only its last code, fnuz and "none" nothing.
    candidates = [f.decode(f.code(0, E, M)) for E in (top_e, top_e - 1) for M in (top_m, top_m - 1)]
    largest = max(v for v in candidates if math.isfinite(v))
    one = f.code(0, f.bias, 0)  # exponent field = bias, mantissa 0
    assert f.decode(one) == 1.0
    # Conventions put specials at the top exponent field (mantissa 0, 1 or all ones) or at -0.
    special = [f.code(s, top_e, M) for s in (0, 1) for M in {0, 1, top_m}] + [f.code(1, 0, 0)]
    specials = [f.decode(c) for c in special]
    return FormatStats(
        f.name, f.bits, 1, f.exp_bits, f.man_bits, f.bias,
        max=largest,
        min_normal=f.decode(f.code(0, 1, 0)),
        min_subnormal=f.decode(f.code(0, 0, 1)),
        eps=f.decode(one + 1) - 1.0,  # the next code after 1.0
        decimal_digits=(f.man_bits + 1) * math.log10(2),  # m stored bits + the implicit leading 1
        has_inf=any(math.isinf(v) for v in specials),
        has_nan=any(math.isnan(v) for v in specials),
    )


def stats(fmt: str | Format) -> FormatStats:
    """Largest value, smallest normal/subnormal, epsilon, decimal digits and specials of `fmt`."""
    fmt = get_format(fmt)
    if isinstance(fmt, FloatFormat):
        return _float_stats(fmt)
    values = all_values(fmt)
    positive = [v for v in values if v > 0]
    if isinstance(fmt, IntFormat):
        digits = (fmt.bits - 1) * math.log10(2)  # magnitude bits: integers up to 2^(bits-1)
        return FormatStats(fmt.name, fmt.bits, 1, None, None, None, max(values), None, min(positive), None,
                           digits, False, False)
    return FormatStats(fmt.name, fmt.bits, 0, None, None, None, max(values), None, min(positive), None,
                       None, False, False)  # a table of values has no significand


def spacing(x: float, fmt: str | Format) -> float:
    """The gap from |x| to the next larger value of float format `fmt` (the ULP at that magnitude).

    In the binade [2^k, 2^(k+1)) the mantissa's 2^m steps are 2^(k - m) apart; below the smallest
    normal the spacing stays at the subnormal step 2^(1 - bias - m).
    """
    f = get_format(fmt)
    if not isinstance(f, FloatFormat):
        raise ValueError(f"spacing is defined here for float formats; {f.name} is {f.kind}.")
    k = max(math.frexp(abs(x))[1] - 1 if x else -math.inf, 1 - f.bias)
    return math.ldexp(1.0, int(k) - f.man_bits)


# ---------------------------------------------------------------------------------------------
# Checks against torch and bitsandbytes
# ---------------------------------------------------------------------------------------------

_INT_VIEW = {8: "uint8", 16: "int16", 32: "int32", 64: "int64"}


def torch_decode(codes: Sequence[int], dtype) -> list[float]:
    """torch's reading of bit patterns: store them as integers, reinterpret the bytes as `dtype`."""
    import torch

    bits = torch.finfo(dtype).bits
    if bits not in _INT_VIEW:
        raise ValueError(f"No integer view of {bits}-bit dtype {dtype}.")
    signed = [c - (1 << bits) if bits > 8 and c >> (bits - 1) else c for c in codes]  # intN is signed
    raw = torch.tensor(signed, dtype=getattr(torch, _INT_VIEW[bits]))
    return raw.view(dtype).to(torch.float64).tolist()


def same_value(a: float, b: float) -> bool:
    """Equal as bit-level values: NaN matches NaN, and -0 differs from +0."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1, a) == math.copysign(1, b)


def mismatches_vs_torch(fmt: str | Format, codes: Sequence[int] | None = None) -> list[int]:
    """Codes where our decoder and torch disagree (default: every code of a format of at most 16 bits)."""
    fmt = get_format(fmt)
    dtype = fmt.torch_dtype()
    if dtype is None:
        raise ValueError(f"torch has no dtype that views {fmt.name}'s bits; compare it another way.")
    codes = list(range(1 << fmt.bits)) if codes is None else list(codes)
    ours = [fmt.decode(c) for c in codes]
    return [c for c, a, b in zip(codes, ours, torch_decode(codes, dtype)) if not same_value(a, b)]


BNB_MISSING = ("bitsandbytes is not installed in this kernel. Install it with `pip install bitsandbytes` "
               "(or install the course with its [compress] extra), then restart the kernel.")


def has_bitsandbytes() -> bool:
    """Is bitsandbytes importable here? (The GPU image and a bare Colab lack it.)"""
    from ..core.optional import have

    return have("bitsandbytes")


def import_bitsandbytes_functional():
    """bitsandbytes.functional, imported quietly; a clear ModuleNotFoundError if bitsandbytes is missing.

    On import, bitsandbytes triggers torch.jit deprecation warnings (its logger's warning about an
    optional kernel package is silenced by course_lib.core.env.NOISY_LOGGERS): harmless noise in a notebook.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import bitsandbytes.functional as bnbf
        except ImportError as err:
            raise ModuleNotFoundError(BNB_MISSING) from err
    return bnbf


def bnb_code_book(name: str = "nf4") -> tuple[float, ...]:
    """bitsandbytes' 16-value table for 'nf4' or 'fp4', in code order."""
    return tuple(import_bitsandbytes_functional().get_4bit_type(name, device="cpu").tolist())
