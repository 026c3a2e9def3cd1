"""Checks for chapter 02: four warm-up formulas, then two exercises that implement part of quantization on tensors.

Warm-ups (formulas on a few numbers): scale and zero point, an integer code, the rounding-error bound, packed int4
bytes.

Implementing:

1. ``check_fake_quantize_groups``: group-wise asymmetric fake quantization of a weight matrix (range widened to
   include 0, integer zero points, a group of zeros). Compared with ``course_lib.quant.fake_quantize``.
2. ``check_pack_signed_int4``: signed 4-bit codes packed two per byte. Compared with ``course_lib.quant.pack_int4``
   of ``to_unsigned``.

Both run on random tensors (fixed seeds, several shapes and bit widths) and on edge cases; after a wrong attempt, a
diagnosis recomputes the usual mistakes (no widening to 0, a float zero point, one scale per row, interleaved
groups, swapped nibbles, two's-complement nibbles, signed bytes, ...) and names the one that matches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..quant import fake_quantize, pack_int4, to_unsigned
from . import check_cases, check_tensor_cases


class Pair(tuple):
    """A (scale, zero_point) answer that compares with a relative tolerance, element by element."""

    def __new__(cls, value):
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
            raise TypeError(f"return a tuple (scale, zero_point), got {value!r}")
        return super().__new__(cls, (float(value[0]), float(value[1])))

    def __eq__(self, other) -> bool:
        return len(other) == 2 and all(math.isclose(a, float(b), rel_tol=1e-6, abs_tol=1e-12) for a, b in zip(self, other))

    __hash__ = tuple.__hash__


def check_scale_zero_point(fn) -> bool:
    """fn(min_val, max_val, bits) -> (scale, zero_point) of asymmetric quantization onto [0, 2^bits - 1]
    (for min_val <= 0 <= max_val)."""
    cases = [((-1.0, 3.0, 8), (4 / 255, 64.0)), ((-0.5, 0.25, 4), (0.05, 10.0)),
             ((-2.0, 2.0, 2), (4 / 3, 2.0)), ((0.0, 1.0, 8), (1 / 255, 0.0))]
    return check_cases("scale_zero_point", lambda *a: Pair(fn(*a)), cases,
                       hint="scale = (max - min) / (2**bits - 1); zero_point = round(-min / scale), an integer.")


def check_quantize_value(fn) -> bool:
    """fn(x, scale, zero_point, bits) -> the unsigned integer code clamp(round(x / scale) + zero_point, 0, 2^bits - 1)."""
    cases = [((0.3, 0.1, 3, 4), 6), ((0.625, 0.25, 3, 4), 5), ((-9.0, 0.5, 8, 4), 0), ((300.0, 1.0, 0, 8), 255),
             ((-0.05, 0.1, 128, 8), 128)]
    return check_cases("quantize_value", fn, cases,
                       hint="round half to even as torch.round and Python's round do (2.5 -> 2), add the zero point, "
                            "then clamp to [0, 2**bits - 1].")


def check_max_rounding_error(fn) -> bool:
    """fn(max_abs, bits) -> the largest |w - w_hat| of symmetric round-to-nearest with s = max_abs / (2^(bits-1) - 1)."""
    cases = [((1.0, 8), 1 / 127 / 2), ((0.12, 4), 0.12 / 7 / 2), ((3.0, 2), 1.5), ((0.5, 3), 0.5 / 3 / 2)]
    return check_cases("max_rounding_error", fn, cases,
                       hint="rounding to the nearest multiple of s moves a value by at most half a step, s / 2.")


def check_packed_int4_bytes(fn) -> bool:
    """fn(out_features, in_features, group_size) -> bytes of int4 codes packed two per byte plus one fp16 scale per group."""
    cases = [((256, 256, 128), 256 * 256 // 2 + 256 * 2 * 2), ((4096, 11008, 128), 4096 * 11008 // 2 + 4096 * 86 * 2),
             ((768, 256, 32), 768 * 128 + 768 * 8 * 2), ((10, 2, 2), 10 + 10 * 2)]
    return check_cases("packed_int4_bytes", fn, cases,
                       hint="codes: out * in / 2 bytes; scales: out * (in / group_size) groups, 2 bytes each.")


# --- inputs -----------------------------------------------------------------------------------------------------------


def _group_range(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(blocks, lo, hi) in float64: w viewed as (out, in / g, g), and each group's range widened to include 0."""
    blocks = w.double().reshape(w.shape[0], -1, group_size)
    return blocks, blocks.amin(-1, keepdim=True).clamp(max=0.0), blocks.amax(-1, keepdim=True).clamp(min=0.0)


def _clear_of_ties(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """w nudged so that no value sits near a rounding tie of asymmetric quantization, in any order of the arithmetic:
    every w / s lies at least 0.1 of a step from k + 1/2, and so does -lo / s (the zero point before rounding).
    A group's smallest value moves by 3% (changing s) until its zero point is clear; then every value except the
    values that set the range (lo and hi, widened to include 0) moves 20% of the way towards its grid point, staying
    inside [lo, hi] (s and z unchanged)."""
    qmax = 2**bits - 1
    w = w.double().clone()
    for _ in range(20):
        blocks, lo, hi = _group_range(w, group_size)
        s = torch.where(hi - lo > 0, (hi - lo) / qmax, torch.ones_like(hi))
        zf = -lo / s
        near = ((zf - zf.floor()) - 0.5).abs() < 0.1
        if not bool(near.any()):
            break
        low = blocks == blocks.amin(-1, keepdim=True)
        blocks[near.expand_as(blocks) & low] *= 1.03
        w = blocks.reshape(w.shape)
    blocks, lo, hi = _group_range(w, group_size)
    s = torch.where(hi - lo > 0, (hi - lo) / qmax, torch.ones_like(hi))
    t = blocks / s
    extreme = (blocks == lo) | (blocks == hi)  # the values that set the grid (lo, hi widened to include 0)
    nudged = torch.minimum(torch.maximum((t.round() + 0.8 * (t - t.round())) * s, lo), hi)  # inside [lo, hi]
    nudged = torch.where(extreme, blocks, nudged)
    return nudged.reshape(w.shape).float()


# --- 1. group-wise asymmetric fake quantization -----------------------------------------------------------------------

FQ_SEEDS = (0, 1, 2)
FQ_SHAPES = ((4, 64, 32, 4), (16, 128, 64, 3), (32, 256, 128, 2), (8, 96, 96, 8), (24, 64, 16, 4))  # (out, in, g, bits)
FQ_STD = 0.05
# w_hat = s * (q - z) with the same integer q and z whatever the order of the arithmetic (the inputs are clear of
# ties): only float32 rounding of s is left, below 1e-7 relative. A code one step off moves a value by s >= 1e-3.
FQ_ATOL, FQ_RTOL = 1e-6, 1e-5


def fake_quantize_groups_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (w, bits, group_size)) of check_fake_quantize_groups: seeds x shapes, then edge
    cases."""
    labels, cases = [], []
    for seed in FQ_SEEDS:
        for out_f, in_f, g, bits in FQ_SHAPES:
            w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(200 + seed)) * FQ_STD
            groups = "one group per row" if g == in_f else f"{in_f // g} groups per row"
            labels.append(f"seed {seed}, w of shape ({out_f}, {in_f}), {bits} bits, group_size {g} ({groups})")
            cases.append((w, bits, g))
    gen = torch.Generator().manual_seed(220)
    w = torch.randn(8, 64, generator=gen) * FQ_STD
    w[2, 16:32] = 0.0
    labels.append("edge case: an all-zero group (w[2, 16:32] = 0: its range is 0), w of shape (8, 64), 4 bits, "
                  "group_size 16")
    cases.append((w, 4, 16))
    labels.append("edge case: every weight positive (each group's range must be widened down to 0), w of shape "
                  "(8, 64), 4 bits, group_size 32")
    cases.append(((torch.randn(8, 64, generator=gen) * FQ_STD).abs() + 0.02, 4, 32))
    labels.append("edge case: every weight negative (widened up to 0: the zero point is the top code), w of shape "
                  "(8, 64), 3 bits, group_size 32")
    cases.append((-(torch.randn(8, 64, generator=gen) * FQ_STD).abs() - 0.02, 3, 32))
    w = torch.randn(4, 64, generator=gen) * FQ_STD
    w[1, :32] = 0.3
    w[3, 40] = 1.0
    labels.append("edge case: a constant group (w[1, :32] = 0.3) and an outlier (w[3, 40] = 1.0, 20x the std), w of "
                  "shape (4, 64), 4 bits, group_size 32")
    cases.append((w, 4, 32))
    return labels, [(_clear_of_ties(w, bits, g), bits, g) for w, bits, g in cases]


def _fq_reference(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    return fake_quantize(w, bits, symmetric=False, granularity="group", group_size=group_size)


def _fq_by_hand(w: torch.Tensor, bits: int, group_size: int, *, groups: str = "contiguous", widen: bool = True,
                zero: str = "round", levels: str = "2^b-1", rounding: str = "round", dequantize: bool = True,
                symmetric: bool = False) -> torch.Tensor:
    """The fake quantization in float64 with one step swapped for a usual mistake (for the diagnosis); the defaults
    give the reference's result."""
    out_f, in_f = w.shape
    w64 = w.double()
    if groups == "interleaved":  # group k = columns k, k + G, k + 2G, ...
        blocks = w64.reshape(out_f, group_size, in_f // group_size).transpose(1, 2)
    else:
        g = {"contiguous": group_size, "row": in_f, "tensor": in_f}[groups]
        blocks = w64.reshape(out_f, in_f // g, g) if groups != "tensor" else w64.reshape(1, 1, -1)
    if symmetric:  # the restricted symmetric grid of section 1
        qmax = 2 ** (bits - 1) - 1
        s = blocks.abs().amax(-1, keepdim=True) / qmax
        s = torch.where(s > 0, s, torch.ones_like(s))
        out = s * torch.clamp(torch.round(blocks / s), -qmax, qmax)
    else:
        qmax = 2**bits - 1
        lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
        if widen:
            lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        s = (hi - lo) / (qmax if levels == "2^b-1" else qmax + 1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        z = {"round": torch.round(-lo / s), "float": -lo / s, "negated": torch.round(lo / s)}[zero]
        rnd = torch.floor if rounding == "floor" else torch.round
        q = torch.clamp(rnd(blocks / s + z) if zero == "float" else rnd(blocks / s) + z, 0, qmax)
        out = s * (q - z) if dequantize else q
    if groups == "interleaved":
        out = out.transpose(1, 2)
    return out.reshape(out_f, in_f)


_FQ_HINT = ("view w as (out, in // group_size, group_size); per group lo = min(min, 0), hi = max(max, 0), "
            "s = (hi - lo) / (2**bits - 1) (1 where that is 0), z = round(-lo / s); q = clamp(round(w / s) + z, 0, "
            "2**bits - 1); return s * (q - z) reshaped to w's shape.")


def _fq_variants() -> list[tuple[dict, str]]:
    return [
        (dict(widen=False), "you didn't widen each group's range to include 0: with lo = min and hi = max of a group "
                            "that is all positive (or all negative) the zero point falls outside [0, 2**bits - 1] "
                            "(section 2, problem 3). Use lo = min(min, 0), hi = max(max, 0): 0 then stays exact."),
        (dict(zero="float"), "your zero point is not an integer: z = -lo / s unrounded (equivalently s * round((w - "
                             "lo) / s) + lo, a float minimum as in Q4_1). The affine grid stores an integer code "
                             "for 0: z = round(-lo / s); q = clamp(round(w / s) + z, 0, 2**bits - 1)."),
        (dict(zero="negated"), "your zero point has the wrong sign: z = round(-lo / s) (lo <= 0, so z >= 0), and "
                               "q = clamp(round(w / s) + z, 0, 2**bits - 1)."),
        (dict(levels="2^b"), "you divided the range by 2**bits; the grid [0, 2**bits - 1] has 2**bits - 1 steps: "
                             "s = (hi - lo) / (2**bits - 1)."),
        (dict(groups="row"), "you used one scale per row, not one per group of group_size consecutive inputs: view w "
                             "as (out, in // group_size, group_size) and reduce over the last dimension."),
        (dict(groups="tensor"), "you used one scale and zero point for the whole tensor, not one per group: view w as "
                                "(out, in // group_size, group_size) and reduce over the last dimension."),
        (dict(groups="interleaved"), "your groups are interleaved (columns k, k + G, k + 2G, ...): a group is "
                                     "group_size consecutive inputs of a row, w.reshape(out, in // group_size, "
                                     "group_size) (not reshape(out, group_size, -1))."),
        (dict(symmetric=True), "you quantized symmetrically (s = max|w| / (2**(bits-1) - 1), no zero point); this "
                               "exercise is the asymmetric grid: s = (hi - lo) / (2**bits - 1), z = round(-lo / s)."),
        (dict(rounding="floor"), "you truncated (floor) instead of rounding to the nearest code: q = "
                                 "clamp(torch.round(w / s) + z, 0, 2**bits - 1)."),
        (dict(dequantize=False), "you returned the integer codes q: de-quantize them, w_hat = s * (q - z)."),
    ]


def _diagnose_fq(args: tuple, got: torch.Tensor) -> str | None:
    w, bits, group_size = args
    got = got.detach().to("cpu", torch.float64)
    if torch.isnan(got).any():
        return ("your result holds NaN: a group of zeros has hi - lo = 0, so s = 0 and w / s is 0 / 0. Use s = 1 "
                "there (any positive scale quantizes zeros to q = z and gives them back as exactly 0).")
    expected = _fq_reference(w, bits, group_size).double()
    for kwargs, message in _fq_variants():
        mistake = _fq_by_hand(w, bits, group_size, **kwargs)
        if torch.allclose(mistake, expected, rtol=FQ_RTOL, atol=FQ_ATOL):
            continue  # this case cannot tell that mistake apart
        if torch.allclose(got, mistake, rtol=10 * FQ_RTOL, atol=10 * FQ_ATOL):
            return message
    if torch.allclose(got, expected, rtol=2e-3, atol=1e-5):
        return ("your values are right to 2-3 digits only: was something computed in float16 or bfloat16? Keep w "
                "and s in float32.")
    return None


def check_fake_quantize_groups(fn) -> bool:
    """fn(w, bits, group_size) -> w_hat, float (out, in): w fake-quantized asymmetrically, one scale and zero point
    per group of `group_size` consecutive inputs of each row (course_lib's convention):

    * view w (out, in) as (out, in // group_size, group_size): group k of row r is w[r, k*g:(k+1)*g];
    * per group, the range widened to include 0: lo = min(min w, 0), hi = max(max w, 0);
    * s = (hi - lo) / (2**bits - 1), and s = 1 for a group of zeros (any positive scale works there);
    * z = round(-lo / s), an integer code in [0, 2**bits - 1]: 0.0 is exactly representable;
    * q = clamp(round(w / s) + z, 0, 2**bits - 1) with torch.round (half to even), w_hat = s * (q - z).

    Checked against course_lib.fake_quantize(w, bits, symmetric=False, granularity="group",
    group_size=group_size) on w ~ N(0, 0.05²) of shapes (4, 64), (16, 128), (32, 256), (8, 96), (24, 64) at 2, 3, 4
    and 8 bits with group sizes 16 to 128 and one group per row, seeds 0, 1, 2; then an all-zero group, all-positive
    and all-negative weights, a constant group and an outlier. (The inputs are nudged so that no value sits near a
    rounding tie: any order of the arithmetic gives the same codes.) Tolerance: |got - expected| <= 1e-6 + 1e-5 *
    |expected| for every entry.
    """
    labels, cases = fake_quantize_groups_cases()
    return check_tensor_cases("fake_quantize_groups", fn, cases, _fq_reference, atol=FQ_ATOL, rtol=FQ_RTOL,
                              labels=labels, hint=_FQ_HINT, diagnose=_diagnose_fq)


# --- 2. packing signed int4 codes two per byte ------------------------------------------------------------------------

PACK_SEEDS = (0, 1, 2)
PACK_SHAPES = ((8,), (4, 16), (16, 64), (2, 3, 32), (1, 2))


def pack_signed_int4_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (q,)) of check_pack_signed_int4: seeds x shapes, then edge cases."""
    labels, cases = [], []
    for seed in PACK_SEEDS:
        for shape in PACK_SHAPES:
            q = torch.randint(-8, 8, shape, generator=torch.Generator().manual_seed(500 + seed), dtype=torch.int8)
            labels.append(f"seed {seed}, random codes in [-8, 7] of shape {shape}")
            cases.append((q,))
    edges = [("every code -8 (every byte 0x00)", torch.full((4, 8), -8, dtype=torch.int8)),
             ("every code 7 (every byte 0xFF)", torch.full((4, 8), 7, dtype=torch.int8)),
             ("every code -1 (bytes 0x77)", torch.full((2, 6), -1, dtype=torch.int8)),
             ("codes -8, 7, -8, 7, ... (every byte 0xF0)", torch.tensor([-8, 7] * 8, dtype=torch.int8).reshape(2, 8)),
             ("codes 7, -8, 7, -8, ... (every byte 0x0F)", torch.tensor([7, -8] * 8, dtype=torch.int8).reshape(2, 8)),
             ("codes 0, 1, ..., 7, -8, ..., -1 in order", torch.arange(16, dtype=torch.int8).sub(8).roll(-8)[None])]
    for text, q in edges:
        labels.append(f"edge case: {text}, shape {tuple(q.shape)}")
        cases.append((q,))
    return labels, cases


def _pack_reference(q: torch.Tensor) -> torch.Tensor:
    return pack_int4(to_unsigned(q, 4))


def _pack_by_hand(q: torch.Tensor, *, offset: str = "8", order: str = "low", pairs: str = "adjacent",
                  shift: int = 4, signed_bytes: bool = False) -> torch.Tensor:
    """The packing in int64 with one step swapped for a usual mistake (for the diagnosis); the defaults give the
    reference's bytes."""
    q = q.to(torch.int64)
    u = {"8": q + 8, "7": q + 7, "twos": q & 0xF, "none": q & 0xFF}[offset]
    n = q.shape[-1]
    first, second = (u[..., 0::2], u[..., 1::2]) if pairs == "adjacent" else (u[..., :n // 2], u[..., n // 2:])
    low, high = (first, second) if order == "low" else (second, first)
    packed = (low | (high << shift)) & 0xFF
    return torch.where(packed > 127, packed - 256, packed) if signed_bytes else packed


_PACK_HINT = ("u = q + 8 (codes 0..15) as uint8; byte i = u[..., 2i] | (u[..., 2i+1] << 4), i.e. "
              "u[..., 0::2] | (u[..., 1::2] << 4): the even element in the low nibble. The result has the last "
              "dimension halved.")


def _pack_variants() -> list[tuple[dict, str]]:
    return [
        (dict(order="high"), "your nibbles are swapped: element 2i goes in the LOW nibble (bits 0-3), element 2i+1 "
                             "in the high one: u[..., 0::2] | (u[..., 1::2] << 4)."),
        (dict(offset="twos"), "you stored each code's two's-complement nibble (q & 0xF: -1 -> 15, -8 -> 8). "
                              "course_lib's layout stores the offset code u = q + 8 (-8 -> 0, 7 -> 15): unsigned codes "
                              "with an implied zero point of 8, as symmetric GPTQ checkpoints store them."),
        (dict(offset="none"), "you packed the signed codes without shifting them to 0..15 first: a negative code "
                              "fills the whole byte. Use u = q + 8 (as uint8), then u[..., 0::2] | "
                              "(u[..., 1::2] << 4)."),
        (dict(offset="7"), "you offset the codes by 7; the signed range is [-8, 7], so u = q + 8 maps it onto "
                           "[0, 15]."),
        (dict(pairs="halves"), "you paired element i with element i + n/2 (the two halves); pairs are neighbours: "
                               "elements 2i and 2i+1 share byte i, u[..., 0::2] | (u[..., 1::2] << 4)."),
        (dict(shift=8), "you shifted the high nibble by 8 (out of the byte); a nibble is 4 bits: "
                        "u[..., 0::2] | (u[..., 1::2] << 4)."),
        (dict(signed_bytes=True), "bytes from 0x80 up come out negative: you returned signed bytes (int8, "
                                  "-128..127). Return uint8 (0..255): build it from u = (q + 8).to(torch.uint8)."),
    ]


def _diagnose_pack(args: tuple, got: torch.Tensor) -> str | None:
    (q,) = args
    got = got.detach().to("cpu", torch.float64)
    expected = _pack_reference(q).double()
    for kwargs, message in _pack_variants():
        mistake = _pack_by_hand(q, **kwargs).double()
        if torch.equal(mistake, expected):
            continue  # this case cannot tell that mistake apart
        if torch.equal(got, mistake):
            return message
    return None


def check_pack_signed_int4(fn) -> bool:
    """fn(q) -> bytes, uint8 of shape (..., n // 2): signed 4-bit codes q (int8 in [-8, 7], shape (..., n), n even)
    packed two per byte along the last dimension, in course_lib's layout (course_lib.quant.pack):

    * shift the codes to unsigned, u = q + 8 in [0, 15] (-8 -> 0, 0 -> 8, 7 -> 15);
    * byte i holds elements 2i and 2i+1: u[2i] in the low nibble, u[2i+1] in the high one,
      byte = u[2i] | (u[2i+1] << 4).

    Checked against course_lib.quant.pack_int4(course_lib.quant.to_unsigned(q, 4)) on random codes of shapes (8,),
    (4, 16), (16, 64), (2, 3, 32) and (1, 2), seeds 0, 1, 2; then codes all -8, all 7, all -1, alternating -8 and 7
    both ways, and 0..7, -8..-1 in order. Every byte must be equal (compared as numbers: any integer dtype that holds
    0..255 passes).
    """
    labels, cases = pack_signed_int4_cases()
    return check_tensor_cases("pack_signed_int4", fn, cases, _pack_reference, atol=0.0, rtol=0.0, labels=labels,
                              hint=_PACK_HINT, diagnose=_diagnose_pack)


WARM_UPS = ("scale_zero_point", "quantize_value", "max_rounding_error", "packed_int4_bytes")

EXERCISES = {
    "scale_zero_point": check_scale_zero_point,
    "quantize_value": check_quantize_value,
    "max_rounding_error": check_max_rounding_error,
    "packed_int4_bytes": check_packed_int4_bytes,
    "fake_quantize_groups": check_fake_quantize_groups,
    "pack_signed_int4": check_pack_signed_int4,
}
