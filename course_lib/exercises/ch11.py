"""Checks for chapter 11: the two halves of a fused W4A16 matmul, on GPTQ-packed 4-bit weights.

1. ``check_dequantize_int4``: unpack the int32 words with shifts and masks and de-quantize, W = s * (u - z).
2. ``check_packed_matmul``: y = x @ W group by group without building W, with the per-group scale and zero point
   taken out of the inner sum (what the fused kernel does).

The layout is GPTQ's (course_lib.gptq.qlinear), read the way the kernel reads it, W as (in, out) = (k, n):

    qweight  int32 (k/8, n)    qweight[r, o] holds the codes u of input rows 8r .. 8r+7 of column o;
                               input row 8r + j at bits 4j .. 4j+3 (low nibble first), u in [0, 15]
    scales   float16 (k/g, n)  one scale per group of g consecutive input rows and output column
    zeros    int32 (k/g, n)    zero points as plain integers in [0, 15] (already unpacked)

    W[i, o] = scales[i // g, o] * (u[i, o] - zeros[i // g, o])

Both checks run the learner's function on random tensors (fixed seeds, several shapes) and edge cases, and compare
with course_lib.gptq's QuantLinear within a stated tolerance. After a wrong attempt, a diagnosis recomputes the
usual mistakes (nibbles read high-first, no mask after the shift, groups mismatched, no zero point, ...) and names
the one that matches.
"""

from __future__ import annotations

import math

import torch

from ..gptq.qlinear import QuantLinear, pack_rows, pack_zeros_v1
from . import check_tensor_cases

BITS = 4
PER_WORD = 32 // BITS  # 8 codes per int32 word

# --- inputs ---------------------------------------------------------------------------------------------------------


def _random_packed(k: int, n: int, group_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor, torch.Tensor]:
    """(u, qweight, scales, zeros): random codes and zero points in [0, 15], float16 scales sized so that x @ W has
    entries of RMS about 1 for x ~ N(0, 1) (u - z has a standard deviation of about 6.5)."""
    u = torch.randint(0, 16, (k, n), generator=g)
    zeros = torch.randint(0, 16, (k // group_size, n), generator=g)
    scales = (0.5 + torch.rand(k // group_size, n, generator=g)) / (6.5 * math.sqrt(k))
    return u, pack_rows(u, BITS), scales.half(), zeros.to(torch.int32)


def _top_nibble_15(u: torch.Tensor) -> torch.Tensor:
    """u with every code of input rows 8r + 7 set to 15: every word's top nibble is 0xF, so every word is negative."""
    u = u.clone()
    u[PER_WORD - 1::PER_WORD] = 15
    return u


def _alternating_zero_points(zeros: torch.Tensor) -> torch.Tensor:
    """Zero points 0 in the even groups and 15 in the odd ones."""
    z = torch.zeros_like(zeros)
    z[1::2] = 15
    return z


# --- 1. dequantize --------------------------------------------------------------------------------------------------

DEQUANT_SEEDS = (0, 1, 2)
DEQUANT_SHAPES = ((128, 8, 32), (256, 24, 64), (384, 64, 128), (384, 8, 64), (256, 64, 256))  # (k, n, group_size)
# s * (u - z) needs at most 11 + 4 significant bits: exact in float32. The tolerance only absorbs float32 rounding
# of another order of the arithmetic; a float16 product (about 3 significant digits) fails it.
DEQUANT_ATOL, DEQUANT_RTOL = 1e-6, 1e-6


def dequantize_int4_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (qweight, scales, zeros, group_size)) of check_dequantize_int4: seeds x shapes,
    then the edge cases."""
    labels, cases = [], []
    for seed in DEQUANT_SEEDS:
        for k, n, group_size in DEQUANT_SHAPES:
            _, qweight, scales, zeros = _random_packed(k, n, group_size, torch.Generator().manual_seed(seed))
            groups = "one group" if group_size == k else f"{k // group_size} groups"
            labels.append(f"seed {seed}, k {k}, n {n}, group_size {group_size} ({groups})")
            cases.append((qweight, scales, zeros, group_size))
    gen = torch.Generator().manual_seed(20)
    _, _, scales, zeros = _random_packed(128, 8, 32, gen)
    labels.append("edge case: every code 15 (every word is 0xFFFFFFFF, i.e. -1 as an int32), k 128, n 8, "
                  "group_size 32")
    cases.append((pack_rows(torch.full((128, 8), 15), BITS), scales, zeros, 32))
    u, _, scales, zeros = _random_packed(256, 24, 64, gen)
    labels.append("edge case: code 15 in every top nibble (input rows 8r + 7; every word is negative as an int32), "
                  "random codes elsewhere, k 256, n 24, group_size 64")
    cases.append((pack_rows(_top_nibble_15(u), BITS), scales, zeros, 64))
    _, qweight, scales, zeros = _random_packed(256, 64, 32, gen)
    labels.append("edge case: zero points 0 (even groups) and 15 (odd groups), k 256, n 64, group_size 32")
    cases.append((qweight, scales, _alternating_zero_points(zeros), 32))
    return labels, cases


def _reference_weight(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                      group_size: int) -> torch.Tensor:
    """W (k, n) float32 from course_lib's QuantLinear (which holds it as (out, in): transposed here)."""
    k, n = qweight.shape[0] * PER_WORD, qweight.shape[1]
    layer = QuantLinear(k, n, bits=BITS, group_size=group_size, bias=False)
    layer.qweight.copy_(qweight)
    layer.qzeros.copy_(pack_zeros_v1(zeros.to(torch.int64), BITS))
    layer.scales.copy_(scales)
    return layer.dequantized_weight(torch.float32).T.contiguous()


def _groups(k: int, group_size: int, how: str = "div") -> torch.Tensor:
    """The group of each input row: i // g (right); i % G (interleaved); (i // 8) // g (the packed row's index)."""
    i = torch.arange(k)
    if how == "div":
        return i // group_size
    if how == "mod":
        return i % (k // group_size)
    if how == "packed":
        return (i // PER_WORD) // group_size
    raise ValueError(how)


def _codes_by_hand(qweight: torch.Tensor, *, order: str = "low", mask: bool = True,
                   top_signed: bool = False) -> torch.Tensor:
    """The codes u (k, n) as float64, unpacked with int32 shifts, with one step swapped for a usual mistake."""
    words = qweight.to(torch.int32)
    j = torch.arange(PER_WORD, dtype=torch.int32)
    shifts = BITS * j if order == "low" else (32 - BITS) - BITS * j  # high-first: row 8r + j from bits 28 - 4j
    u = words[:, None, :] >> shifts[None, :, None]  # an arithmetic shift: a negative word fills with 1s
    if mask:
        u = u & 0xF
    if top_signed:  # masked, except the top nibble: (word >> 28) of a negative word is negative
        u[:, PER_WORD - 1] = words >> (32 - BITS)
    return u.reshape(-1, qweight.shape[1]).double()


def _weight_by_hand(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, *,
                    codes: dict | None = None, group: str = "div", scale_group: str | None = None,
                    zero: bool = True, scale: bool = True) -> torch.Tensor:
    """W (k, n) float64 with one step swapped for a usual mistake (for the diagnosis); the defaults give the
    reference's W."""
    u = _codes_by_hand(qweight, **(codes or {}))
    k = u.shape[0]
    zg, sg = _groups(k, group_size, group), _groups(k, group_size, scale_group or group)
    z = zeros.double()[zg] if zero else 0.0
    s = scales.double()[sg] if scale else 1.0
    return s * (u - z)


_DEQUANT_HINT = ("W has shape (k, n) = (in, out), the transpose of nn.Linear's weight. For input row i = 8r + j: "
                 "u = (qweight[r] >> 4j) & 0xF (low nibble first), its group gi = i // group_size, and "
                 "W[i] = scales[gi] * (u - zeros[gi]), in float32.")
_INDEX_HINT = ("scales and zeros have k / group_size rows, one per group: index them with the group of the input "
               "row, i // group_size (for the packed row r and nibble j: (8r + j) // group_size), not with the "
               "packed row r = i // 8.")
_LOW_PRECISION = ("your values are right to about 3 significant digits only: the products were computed in float16 "
                  "(scales is float16, and float16 times an integer tensor stays float16). Convert first, "
                  "scales.float(): the result must be float32 (s * (u - z) is then exact).")


def _mistake_messages() -> dict[str, str]:
    return {
        "order": ("you read the nibbles high-first (input row 8r + j from bits 28 - 4j). GPTQ packs low nibble "
                  "first: input row 8r + j sits at bits 4j .. 4j+3, so u = (word >> 4j) & 0xF."),
        "mask": ("you didn't mask after the shift: word >> 4j still holds the higher nibbles, and for a negative "
                 "word (top nibble >= 8) the arithmetic shift of an int32 fills with 1s (sign extension). Keep the "
                 "low 4 bits: (word >> 4j) & 0xF."),
        "top": ("your top-nibble codes (input rows 8r + 7) come out negative: word >> 28 of a negative int32 is "
                "sign-extended (an arithmetic shift). Mask after every shift, the last one too: "
                "(word >> 28) & 0xF."),
        "mod": ("you took the group of input row i as i % n_groups (groups interleaved). A group is g consecutive "
                "input rows: gi = i // group_size."),
        "packed": ("you indexed the group by the packed row r = i // 8 (e.g. r // group_size): a packed row holds 8 "
                   "input rows, and the group belongs to the input row i = 8r + j: gi = i // group_size."),
        "zero": ("you didn't subtract the zero point: W = scales[gi] * (u - zeros[gi]); the codes are unsigned "
                 "(0..15) and zeros[gi] says which code means 0."),
        "scale": "you didn't multiply by the scale: W = scales[gi] * (u - zeros[gi]).",
        "raw": ("you returned the codes u themselves: de-quantize them, W = scales[gi] * (u - zeros[gi]) with "
                "gi = i // group_size."),
    }


_DEQUANT_VARIANTS = (
    (dict(codes=dict(order="high")), "order"),
    (dict(codes=dict(mask=False)), "mask"),
    (dict(codes=dict(top_signed=True)), "top"),
    (dict(group="mod"), "mod"),
    (dict(group="packed"), "packed"),
    (dict(scale_group="packed"), "packed"),
    (dict(zero=False), "zero"),
    (dict(scale=False), "scale"),
    (dict(zero=False, scale=False), "raw"),
)


def _low_precision(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """got is expected up to half-precision rounding (but not within the float32 tolerance)."""
    return bool(torch.allclose(got, expected, rtol=4e-3, atol=1e-6))


def _diagnose_dequantize(args: tuple, got: torch.Tensor) -> str | None:
    qweight, scales, zeros, group_size = args
    got = got.detach().to("cpu", torch.float64)
    expected = _weight_by_hand(qweight, scales, zeros, group_size)
    messages = _mistake_messages()
    for kwargs, key in _DEQUANT_VARIANTS:
        mistake = _weight_by_hand(qweight, scales, zeros, group_size, **kwargs)
        if torch.allclose(mistake, expected, rtol=DEQUANT_RTOL, atol=DEQUANT_ATOL):
            continue  # this case cannot tell that mistake apart
        if torch.allclose(got, mistake, rtol=1e-3, atol=1e-6):
            return messages[key]
    if _low_precision(got, expected):
        return _LOW_PRECISION
    return None


def _noting_errors(fn, seen: list):
    """fn, noting the exceptions it raises (other than NotImplementedError, the stub) in `seen`."""
    def wrapped(*args):
        try:
            return fn(*args)
        except NotImplementedError:
            raise
        except Exception as exc:
            seen.append(exc)
            raise
    return wrapped


def check_dequantize_int4(fn) -> bool:
    """fn(qweight, scales, zeros, group_size) -> W, float32 of shape (k, n): the 4-bit weight de-quantized.

    The layout is GPTQ's (course_lib.gptq.qlinear), with W as (in, out) = (k, n), the transpose of nn.Linear's
    weight (how the kernel reads it):
    * qweight int32 (k/8, n): qweight[r, o] holds the codes of input rows 8r .. 8r+7 of column o; input row 8r + j
      at bits 4j .. 4j+3 (low nibble first). Codes are unsigned, u in [0, 15]. A word whose top nibble is >= 8 is
      negative as an int32: >> is then an arithmetic shift, so mask after shifting (& 0xF).
    * scales float16 (k/g, n) and zeros (k/g, n), plain integers in [0, 15]: one per group of g = group_size
      consecutive input rows and output column.
    * W[i, o] = scales[i // g, o] * (u[i, o] - zeros[i // g, o]), computed in float32.

    Checked on k in {128, 256, 384}, n in {8, 24, 64}, group_size in {32, 64, 128} and group_size = k (one group),
    seeds 0, 1, 2; then every code 15 (every word -1), code 15 in every top nibble (negative words), zero points 0
    and 15. Tolerance: |got - expected| <= 1e-6 + 1e-6 * |expected| (in float32 the result is exact).
    """
    labels, cases = dequantize_int4_cases()
    errors: list = []
    ok = check_tensor_cases("dequantize_int4", _noting_errors(fn, errors), cases, _reference_weight,
                            atol=DEQUANT_ATOL, rtol=DEQUANT_RTOL, labels=labels, hint=_DEQUANT_HINT,
                            diagnose=_diagnose_dequantize)
    if not ok and errors and isinstance(errors[-1], IndexError):
        print(f"    Hint: {_INDEX_HINT}")
    return ok


# --- 2. packed matmul -----------------------------------------------------------------------------------------------

MATMUL_SEEDS = (0, 1, 2)
MATMUL_SHAPES = ((1, 128, 8, 32), (3, 256, 24, 64), (16, 384, 64, 128), (3, 256, 64, 256), (16, 384, 8, 32))
# (m, k, n, group_size). The outputs have an RMS of about 1 (the scales are sized for it), so atol is about 1e-4 of
# their typical size; float32 rounding of the fold (sums of up to 384 products of size ~10) stays below 1e-5.
MATMUL_ATOL, MATMUL_RTOL = 1e-4, 1e-4


def packed_matmul_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (x, qweight, scales, zeros, group_size)) of check_packed_matmul: seeds x shapes,
    then the edge cases."""
    labels, cases = [], []
    for seed in MATMUL_SEEDS:
        for m, k, n, group_size in MATMUL_SHAPES:
            gen = torch.Generator().manual_seed(100 + seed)
            _, qweight, scales, zeros = _random_packed(k, n, group_size, gen)
            x = torch.randn(m, k, generator=gen)
            groups = "one group" if group_size == k else f"{k // group_size} groups"
            labels.append(f"seed {seed}, x of shape ({m}, {k}), n {n}, group_size {group_size} ({groups})")
            cases.append((x, qweight, scales, zeros, group_size))
    gen = torch.Generator().manual_seed(120)
    u, _, scales, zeros = _random_packed(256, 24, 64, gen)
    labels.append("edge case: code 15 in every top nibble (input rows 8r + 7; every word is negative as an int32), "
                  "x of shape (3, 256), n 24, group_size 64")
    cases.append((torch.randn(3, 256, generator=gen), pack_rows(_top_nibble_15(u), BITS), scales, zeros, 64))
    _, qweight, scales, zeros = _random_packed(256, 64, 32, gen)
    labels.append("edge case: zero points 0 (even groups) and 15 (odd groups), x of shape (16, 256), n 64, "
                  "group_size 32")
    cases.append((torch.randn(16, 256, generator=gen), qweight, scales, _alternating_zero_points(zeros), 32))
    _, qweight, scales, zeros = _random_packed(128, 24, 32, gen)
    x = torch.randn(3, 128, generator=gen)
    x[0], x[2] = 1.0, 0.0
    labels.append("edge case: x[0] all ones (the zero-point term is largest), x[2] all zeros, x of shape (3, 128), "
                  "n 24, group_size 32")
    cases.append((x, qweight, scales, zeros, 32))
    return labels, cases


def _reference_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                      group_size: int) -> torch.Tensor:
    """x @ W in float64, W from course_lib's QuantLinear."""
    return x.double() @ _reference_weight(qweight, scales, zeros, group_size).double()


def _matmul_by_hand(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int, *, codes: dict | None = None, group: str = "div", scale: str = "group",
                    zero_sign: int = -1, x_sum: str = "group") -> torch.Tensor:
    """The fold, in float64, with one step swapped for a usual mistake (for the diagnosis); the defaults give the
    reference's result. Per group: y += (x_g @ u_g) * s + zero_sign * (sum of x_g) * z * s."""
    u = _codes_by_hand(qweight, **(codes or {}))
    k, n = u.shape
    rows_of = _groups(k, group_size, group)
    x64, s_all, z_all = x.double(), scales.double(), zeros.double()
    s_once = {"first": s_all[0], "last": s_all[-1], "mean": s_all.mean(0), "scalar": s_all.mean(), "none": 1.0}
    y = torch.zeros(x.shape[0], n, dtype=torch.float64)
    for gi in range(k // group_size):
        rows = rows_of == gi
        x_g, u_g = x64[:, rows], u[rows]
        s = s_all[gi] if scale == "group" else s_once[scale]
        sums = {"group": x_g.sum(1, keepdim=True), "all": x64.sum(1, keepdim=True), "batch": x_g.sum()}[x_sum]
        y += (x_g @ u_g) * s + zero_sign * sums * z_all[gi] * s
    return y


_MATMUL_HINT = ("for each group gi (input rows gi*g .. gi*g + g - 1): x_g = x[:, gi*g:(gi+1)*g]; unpack its g/8 "
                "packed rows qweight[gi*g//8:(gi+1)*g//8] into u_g (g, n) with (word >> 4j) & 0xF (row 8r + j at "
                "bits 4j, low nibble first); then y += (x_g @ u_g) * scales[gi] - x_g.sum(1, keepdim=True) * "
                "zeros[gi] * scales[gi]. y is float32 of shape (m, n).")


def _matmul_variants() -> list[tuple[dict, str]]:
    m = _mistake_messages()
    fold = ("y = sum over groups of (x_g @ u_g) * s_g - (x_g summed over the group's inputs) * z_g * s_g, with "
            "s_g = scales[gi] and z_g = zeros[gi] rows of shape (n,).")
    once = ("you applied one scale to the whole output (once per tensor: after the loop, or the first / last "
            "group's, or an average). Every group has its own scales[gi]: multiply each group's partial sum by its "
            "own scale, inside the loop. " + fold)
    return [
        (dict(zero_sign=0), "you left out the zero-point correction (the codes are unsigned, 0..15): subtract "
                            "x_g.sum(1, keepdim=True) * zeros[gi] * scales[gi] for every group. " + fold),
        (dict(zero_sign=1), "you added the zero-point correction; subtract it: W = s * (u - z), so "
                            "y -= x_g.sum(1, keepdim=True) * zeros[gi] * scales[gi]."),
        (dict(scale="first"), once),
        (dict(scale="last"), once),
        (dict(scale="mean"), once),
        (dict(scale="scalar"), once),
        (dict(scale="none"), "you didn't multiply by the scales: " + fold),
        (dict(group="mod"), "your groups don't line up: " + m["mod"] + " Group gi is x[:, gi*g:(gi+1)*g] with the "
                            "packed rows qweight[gi*g//8:(gi+1)*g//8], scales[gi] and zeros[gi]."),
        (dict(group="packed"), "your groups don't line up: " + m["packed"] + " Group gi is x[:, gi*g:(gi+1)*g] "
                               "with the packed rows qweight[gi*g//8:(gi+1)*g//8]."),
        (dict(x_sum="all"), "your zero-point correction sums x over all k inputs; it needs only the group's "
                            "inputs: x_g.sum(1, keepdim=True) with x_g = x[:, gi*g:(gi+1)*g]."),
        (dict(x_sum="batch"), "your zero-point correction sums x_g over the batch too (x_g.sum()): each row of x "
                              "has its own sum, x_g.sum(dim=1, keepdim=True), of shape (m, 1)."),
        (dict(codes=dict(order="high")), m["order"]),
        (dict(codes=dict(mask=False)), m["mask"]),
        (dict(codes=dict(top_signed=True)), m["top"]),
    ]


def _diagnose_matmul(args: tuple, got: torch.Tensor) -> str | None:
    got = got.detach().to("cpu", torch.float64)
    expected = _reference_matmul(*args)
    for kwargs, message in _matmul_variants():
        mistake = _matmul_by_hand(*args, **kwargs)
        if torch.allclose(mistake, expected, rtol=MATMUL_RTOL, atol=MATMUL_ATOL):
            continue  # this case cannot tell that mistake apart
        if torch.allclose(got, mistake, rtol=3 * MATMUL_RTOL, atol=3 * MATMUL_ATOL):
            return message
    if bool(torch.allclose(got, expected, rtol=1e-2, atol=1e-2)):
        return ("your result is right to 2-3 digits only: was something computed in float16 or bfloat16? Keep x, "
                "the codes and the scales in float32 (scales.float(), u.float()).")
    return None


def check_packed_matmul(fn) -> bool:
    """fn(x, qweight, scales, zeros, group_size) -> y = x @ W, float32 of shape (m, n), for x float32 (m, k) and
    the packed 4-bit weight of check_dequantize_int4 (same layout: W is (k, n), W[i, o] = scales[i // g, o] *
    (u[i, o] - zeros[i // g, o]), input row 8r + j at bits 4j .. 4j+3 of qweight[r]).

    Write it the way the fused kernel does, without building the full (k, n) weight: loop over the groups; for
    group gi take x_g = x[:, gi*g:(gi+1)*g] and unpack only its g/8 packed rows into codes u_g (g, n); the scale
    and the zero point are constant over the group, so they come out of the inner sum:

        y += (x_g @ u_g) * scales[gi] - x_g.sum(dim=1, keepdim=True) * zeros[gi] * scales[gi]

    (the check compares results only: it cannot see how y was computed).

    Checked on m in {1, 3, 16}, k in {128, 256, 384}, n in {8, 24, 64}, group_size in {32, 64, 128} and
    group_size = k, seeds 0, 1, 2; then negative words (code 15 in every top nibble), zero points 0 and 15, and x
    with a row of ones and a row of zeros. The outputs have an RMS of about 1. Tolerance: |got - expected| <= 1e-4
    + 1e-4 * |expected| for every entry (float32 rounding of the fold is below 1e-5).
    """
    labels, cases = packed_matmul_cases()
    errors: list = []
    ok = check_tensor_cases("packed_matmul", _noting_errors(fn, errors), cases, _reference_matmul,
                            atol=MATMUL_ATOL, rtol=MATMUL_RTOL, labels=labels, hint=_MATMUL_HINT,
                            diagnose=_diagnose_matmul)
    if not ok and errors:
        if isinstance(errors[-1], IndexError):
            print(f"    Hint: {_INDEX_HINT}")
        elif isinstance(errors[-1], RuntimeError) and "cannot be multiplied" in str(errors[-1]):
            print("    Hint: x_g and u_g don't match: group gi has g inputs, x_g = x[:, gi*g:(gi+1)*g] (m, g), and "
                  "g / 8 packed rows, qweight[gi*g//8:(gi+1)*g//8], which unpack to u_g of shape (g, n).")
    return ok


EXERCISES = {"dequantize_int4": check_dequantize_int4, "packed_matmul": check_packed_matmul}
