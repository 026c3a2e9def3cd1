"""Checks for chapter 05: NF4's blockwise round trip, LLM.int8()'s outlier decomposition, double quantization's bits.

The two tensor exercises run the learner's function on random tensors (fixed seeds, several shapes) and on edge
cases, and compare with course_lib.bnb within a stated tolerance. After a wrong attempt, a diagnosis recomputes
the usual mistakes (one absmax per tensor, a uniform grid, no decomposition, ...) and names the one that matches.
"""

from __future__ import annotations

import torch

from ..bnb import int8 as bnb_int8
from ..bnb import nf4 as bnb_nf4
from . import check_cases, check_tensor_cases

# --- NF4 round trip ---------------------------------------------------------------------------------------------

NF4_SEEDS = (0, 1, 2)
NF4_SHAPES = (((64,), 64), ((4, 64), 64), ((8, 128), 64), ((3, 5, 64), 64), ((2, 96), 32))  # (shape, blocksize)
NF4_STD = 0.02
NF4_ATOL, NF4_RTOL = 1e-6, 0.0


def nf4_roundtrip_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (w, blocksize)) of check_nf4_roundtrip: seeds x shapes, then the edge cases."""
    labels, cases = [], []
    for seed in NF4_SEEDS:
        for shape, blocksize in NF4_SHAPES:
            w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * NF4_STD
            labels.append(f"seed {seed}, w of shape {shape}, blocksize {blocksize}")
            cases.append((w, blocksize))
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(10)) * NF4_STD
    w[1] = 0.0  # the second block of 64 is all zeros
    labels.append("edge case: w of shape (4, 64) whose second block of 64 is all zeros, blocksize 64")
    cases.append((w, 64))
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(11)) * NF4_STD
    w[3, 17] = 1.0  # 50 standard deviations
    labels.append("edge case: w of shape (8, 128) with one outlier w[3, 17] = 1.0 (50x the std), blocksize 64")
    cases.append((w, 64))
    return labels, cases


def _nf4_reference(w: torch.Tensor, blocksize: int) -> torch.Tensor:
    return bnb_nf4.roundtrip(w, bnb_nf4.code_values("nf4"), blocksize)


def _nf4_by_hand(w: torch.Tensor, blocksize: int, code: torch.Tensor, *, scale: str = "absmax",
                 pick: str = "nearest", scale_back: bool = True) -> torch.Tensor:
    """The round trip with one step swapped for a usual mistake (for the diagnosis)."""
    blocks = w.reshape(-1, blocksize).float()
    if scale == "max":  # the largest value, not the largest magnitude
        absmax = blocks.amax(dim=1, keepdim=True)
    else:
        absmax = blocks.abs().amax(dim=1, keepdim=True)
    normed = blocks / torch.where(absmax == 0, torch.ones_like(absmax), absmax)
    if pick == "nearest":
        idx = (normed[..., None] - code).abs().argmin(dim=-1)
    elif pick == "round_index":  # as if the 16 values were evenly spaced on [-1, 1]
        idx = torch.round((normed + 1) * (len(code) - 1) / 2).long()
    elif pick == "round_index_int4":  # round(x * 7) + 7, the symmetric int4 index
        idx = torch.round(normed * 7).long() + 7
    elif pick == "next_up":  # searchsorted against the values themselves: the next value up
        idx = torch.searchsorted(code, normed.contiguous())
    elif pick == "next_down":
        idx = torch.searchsorted(code, normed.contiguous(), right=True) - 1
    else:
        raise ValueError(pick)
    vals = code[idx.clamp(0, len(code) - 1)]
    return (vals * absmax if scale_back else vals).reshape(w.shape)


def _diagnose_nf4(args: tuple, got: torch.Tensor) -> str | None:
    w, blocksize = args
    got = got.detach().to("cpu", torch.float64)
    if torch.isnan(got).any():
        return ("your result holds NaN: a block of zeros has absmax 0 and 0 / 0 is NaN. Divide by the absmax only "
                "where it is > 0 (e.g. torch.where(absmax == 0, 1, absmax)): a block of zeros must come back as zeros.")
    nf4 = bnb_nf4.code_values("nf4")
    expected = _nf4_reference(w, blocksize).double()
    nearest = ("you picked a code by rounding an index, as if the 16 NF4 values were evenly spaced; they are not "
               "(denser near 0). Take the value with the smallest |w / absmax - value|: (x[..., None] - code).abs()"
               ".argmin(-1).")
    side = ("you took the neighbouring code value on one side (searchsorted/bucketize against the values "
            "themselves), not the nearest one: compare |w / absmax - value| for every value, or use the midpoints "
            "between neighbours as the boundaries.")
    variants = [
        (lambda: bnb_nf4.roundtrip(w, nf4, w.numel()),
         f"you used one absmax for the whole tensor, not one per block of {blocksize}: then a single large value "
         "squeezes every block towards 0. Reshape the flat tensor to [-1, blocksize] and take the absmax per row."),
        (lambda: bnb_nf4.roundtrip(w, nf4, w.shape[-1]) if w.dim() > 1 else None,
         f"you used one absmax per row of w (its last dimension, {w.shape[-1]} values), not one per block of "
         f"{blocksize} consecutive values of the flattened tensor (w.reshape(-1, blocksize))."),
        (lambda: bnb_nf4.roundtrip(w, bnb_nf4.int4_code(), blocksize),
         "you rounded to a uniform int4 grid (k / 7), not to the 16 NF4 values: NF4's values are quantiles of "
         "N(0, 1), denser near 0. Use course_lib.bnb.nf4.code_values(\"nf4\")."),
        (lambda: bnb_nf4.roundtrip(w, torch.linspace(-1, 1, 16), blocksize),
         "you rounded to 16 evenly spaced values on [-1, 1] (a uniform 4-bit grid), not to the 16 NF4 values: "
         "NF4's values are quantiles of N(0, 1), denser near 0. Use course_lib.bnb.nf4.code_values(\"nf4\")."),
        (lambda: _nf4_by_hand(w, blocksize, nf4, scale_back=False),
         "you forgot to multiply back by the block's absmax: your values are the NF4 code values themselves "
         "(all in [-1, 1]). De-quantize: code value x absmax of its block."),
        (lambda: _nf4_by_hand(w, blocksize, nf4, pick="round_index"), nearest),
        (lambda: _nf4_by_hand(w, blocksize, nf4, pick="round_index_int4"), nearest),
        (lambda: _nf4_by_hand(w, blocksize, nf4, pick="next_up"), side),
        (lambda: _nf4_by_hand(w, blocksize, nf4, pick="next_down"), side),
        (lambda: _nf4_by_hand(w, blocksize, nf4, scale="max"),
         "you divided by the block's largest value, not its largest magnitude: absmax = block.abs().amax()."),
    ]
    for make, message in variants:
        mistake = make()
        if mistake is None or mistake.shape != got.shape:
            continue
        mistake = mistake.double()
        if torch.allclose(mistake, expected, rtol=1e-5, atol=1e-7):
            continue  # this case cannot tell that mistake apart
        if torch.allclose(got, mistake, rtol=1e-4, atol=1e-6):
            return message
    on_grid = (got.reshape(-1, 1) - nf4.double()).abs().amin(dim=1) <= 1e-6
    if bool(on_grid.all()) and not bool(torch.allclose(got, expected, atol=1e-6)):
        return ("every value you return is one of the 16 NF4 code values: you forgot to multiply back by the "
                "block's absmax.")
    return None


def check_nf4_roundtrip(fn) -> bool:
    """fn(w, blocksize) -> w stored as NF4 and read back (QLoRA's blockwise absmax quantization, no packing).

    w is a float32 tensor of any shape whose number of values is a multiple of `blocksize`. Steps:
    1. read w flat (w.reshape(-1)) and cut it into blocks of `blocksize` consecutive values;
    2. divide each block by its absmax, the largest |value| in the block (a block of zeros stays zeros: no NaN);
    3. replace every value by the nearest of the 16 NF4 values, code = course_lib.bnb.nf4.code_values("nf4")
       (sorted from -1 to 1, not evenly spaced);
    4. multiply each block back by its absmax; return a float tensor of w's shape.

    Checked against course_lib.bnb.nf4.roundtrip(w, code, blocksize) on normal weights (std 0.02) of shapes
    (64,), (4, 64), (8, 128), (3, 5, 64) with blocksize 64 and (2, 96) with blocksize 32, seeds 0, 1, 2, then a
    tensor with a block of zeros and one with a single large outlier: every value within 1e-6 (absolute).
    """
    labels, cases = nf4_roundtrip_cases()
    return check_tensor_cases(
        "nf4_roundtrip", fn, cases, _nf4_reference, atol=NF4_ATOL, rtol=NF4_RTOL, labels=labels,
        diagnose=_diagnose_nf4,
        hint="flatten w and view it as rows of `blocksize`; divide each row by its own max |value| (leave a zero "
             "row at zero); replace each value by the nearest of the 16 values of code_values(\"nf4\"); multiply "
             "each row back by its max |value|; reshape to w's shape.")


# --- LLM.int8() ------------------------------------------------------------------------------------------------

INT8_SEEDS = (0, 1, 2)
INT8_SHAPES = ((1, 32, 8), (4, 64, 16), (7, 96, 24), (16, 128, 64))  # (tokens, in, out)
INT8_THRESHOLD = 6.0
INT8_W_STD = 0.05
INT8_ATOL, INT8_RTOL = 1e-4, 1e-4


def _plant_outliers(x: torch.Tensor, g: torch.Generator, n_cols: int) -> torch.Tensor:
    """Put values of magnitude 20..60 into `n_cols` random columns of x (in a random, non-empty set of rows)."""
    tokens, d_in = x.shape
    cols = torch.randperm(d_in, generator=g)[:n_cols]
    for c in cols.tolist():
        rows = torch.rand(tokens, generator=g) < 0.5
        rows[torch.randint(tokens, (1,), generator=g)] = True
        size = 20 + 40 * torch.rand(tokens, generator=g)
        sign = torch.where(torch.rand(tokens, generator=g) < 0.5, -1.0, 1.0)
        x[rows, c] = (size * sign)[rows]
    return x


def int8_outlier_matmul_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (x, w, threshold)) of check_int8_outlier_matmul: seeds x shapes, then edge cases."""
    labels, cases = [], []
    for seed in INT8_SEEDS:
        for i, (tokens, d_in, d_out) in enumerate(INT8_SHAPES):
            g = torch.Generator().manual_seed(seed)
            x = _plant_outliers(torch.randn(tokens, d_in, generator=g), g, n_cols=1 + (seed + i) % 3)
            w = torch.randn(d_out, d_in, generator=g) * INT8_W_STD
            labels.append(f"seed {seed}, x of shape ({tokens}, {d_in}) with {1 + (seed + i) % 3} outlier column(s), "
                          f"w of shape ({d_out}, {d_in}), threshold {INT8_THRESHOLD}")
            cases.append((x, w, INT8_THRESHOLD))
    g = torch.Generator().manual_seed(7)
    x = _plant_outliers(torch.randn(8, 64, generator=g), g, n_cols=2)
    labels.append("edge case: threshold 0.0 (no decomposition: plain vector-wise int8), x of shape (8, 64) with 2 "
                  "outlier columns, w of shape (16, 64)")
    cases.append((x, torch.randn(16, 64, generator=g) * INT8_W_STD, 0.0))
    x = torch.randn(8, 64, generator=g).clamp(-5, 5)
    labels.append("edge case: no outliers at all (every |x| < 5), x of shape (8, 64), w of shape (16, 64), "
                  "threshold 6.0")
    cases.append((x, torch.randn(16, 64, generator=g) * INT8_W_STD, INT8_THRESHOLD))
    x = torch.randn(6, 64, generator=g).clamp(-4, 4)
    x[2, 10], x[4, 30] = 6.0, -6.0  # the only large values of their columns: exactly at the threshold
    x[[0, 3], 50] = torch.tensor([31.0, -24.0])  # and one ordinary outlier column
    labels.append("edge case: x[2, 10] = 6.0 and x[4, 30] = -6.0 exactly at the threshold (the largest |x| of their "
                  "columns), x[:, 50] an ordinary outlier column, x of shape (6, 64), w of shape (16, 64), "
                  "threshold 6.0")
    cases.append((x, torch.randn(16, 64, generator=g) * INT8_W_STD, INT8_THRESHOLD))
    x = _plant_outliers(torch.randn(5, 64, generator=g), g, n_cols=2)
    x[1] = 0.0  # a token of zeros
    x[3] = torch.where(x[3].abs() >= INT8_THRESHOLD, x[3], torch.zeros(()))  # only outliers: zero once masked
    x[3, (x.abs() >= INT8_THRESHOLD).any(0)] = 30.0
    w = torch.randn(16, 64, generator=g) * INT8_W_STD
    w[2] = 0.0  # an output row of zero weights
    labels.append("edge case: zero rows: x[1] = 0, x[3] holds only outliers (zero once they are taken out), "
                  "w[2] = 0; x of shape (5, 64), w of shape (16, 64), threshold 6.0")
    cases.append((x, w, INT8_THRESHOLD))
    return labels, [_clear_of_ties(*case) for case in cases]


def _nudge_rows(v: torch.Tensor) -> torch.Tensor:
    """v with every value moved 20% of the way to the centre of its int8 step (absmax per row): v · 127 / absmax
    then lies at least 0.1 from a rounding boundary (k + 1/2), so round() gives the same code whichever way the
    learner orders the arithmetic (x * 127 / c, x / c * 127, float64...). The row's absmax is unchanged."""
    v64 = v.double()
    absmax = v64.abs().amax(dim=1, keepdim=True)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    t = v64 * 127 / safe
    nudged = (t.round() + 0.8 * (t - t.round())) * safe / 127
    return torch.where(v64.abs() == absmax, v64, nudged).float()


def _clear_of_ties(x: torch.Tensor, w: torch.Tensor, threshold: float) -> tuple:
    """The case with x's quantized entries (those below the threshold) and w nudged clear of rounding ties."""
    big = x.abs() >= threshold if threshold > 0 else torch.zeros_like(x, dtype=torch.bool)
    x = torch.where(big, x, _nudge_rows(x.masked_fill(big, 0)))
    return x, _nudge_rows(w), threshold


def _int8_reference(x: torch.Tensor, w: torch.Tensor, threshold: float) -> torch.Tensor:
    return bnb_int8.llm_int8_linear(x, w, threshold=threshold, outlier_weight=w).out


def _rowwise_int8(v: torch.Tensor, per_tensor: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    absmax = v.abs().amax().expand(v.shape[0]) if per_tensor else v.abs().amax(dim=1)
    scale = torch.where(absmax > 0, 127 / absmax, torch.zeros_like(absmax))
    return torch.round(v * scale[:, None]), absmax


def _int8_by_hand(x: torch.Tensor, w: torch.Tensor, threshold: float, *, strict: bool = False,
                  decompose: bool = True, per_tensor_x: bool = False, per_tensor_w: bool = False,
                  exclude_cols: bool = True, mask_entries: bool = True, mask_whole_cols: bool = False,
                  w_absmax_inliers_only: bool = False, outlier_w: str = "float") -> torch.Tensor:
    """The decomposition with one step swapped for a usual mistake (for the diagnosis); the defaults give the
    reference's result."""
    x, w = x.float(), w.float()
    if decompose and threshold > 0:
        big = x.abs() > threshold if strict else x.abs() >= threshold
    else:
        big = torch.zeros_like(x, dtype=torch.bool)
    cols = big.any(dim=0)
    x_in = x.masked_fill(big, 0) if mask_entries else x
    if mask_whole_cols:
        x_in = x_in.masked_fill(cols[None, :], 0)
    xq, cx = _rowwise_int8(x_in, per_tensor_x)
    if exclude_cols:
        xq = xq.masked_fill(cols[None, :], 0)
    wq, cw = _rowwise_int8(w.masked_fill(cols[None, :], 0) if w_absmax_inliers_only else w, per_tensor_w)
    y = (xq.to(torch.int32) @ wq.to(torch.int32).t()).float() * (cx[:, None] * cw[None, :]) / 127**2
    if cols.any():
        w_cols = w[:, cols] if outlier_w == "float" else (wq * cw[:, None] / 127)[:, cols]
        y = y + x[:, cols] @ w_cols.t()
    return y


def _diagnose_int8(args: tuple, got: torch.Tensor) -> str | None:
    x, w, threshold = args
    got = got.detach().to("cpu", torch.float64)
    if torch.isnan(got).any():
        return ("your result holds NaN: a row with absmax 0 (a token of zeros, a token whose only non-zero entries "
                "are outliers, or an output row of zero weights) gives 0 / 0. Its codes must simply be 0.")
    expected = _int8_reference(x, w, threshold).double()
    no_decomposition = ("you quantized everything to int8 (no decomposition): the columns of x with any "
                        "|x| >= threshold must go through a float matmul with w's float columns, and be left out "
                        "of the int8 product and of each row's absmax.")
    per_tensor = ("you used one absmax for the whole tensor, not one per row: LLM.int8() is vector-wise, c_x[t] = "
                  "max |x_in[t, :]| per token and c_w[o] = max |w[o, :]| per output row; rescale by "
                  "c_x[t] * c_w[o] / 127².")
    double = ("the outlier columns are counted twice: you added their float product x[:, O] @ w[:, O].T but left "
              "them in the int8 part too. Set the int8 codes of the outlier columns to 0 (x_q[:, O] = 0) before "
              "the integer matmul.")
    variants = [
        (dict(strict=True),
         f"you compared |x| > threshold; the rule is |x| >= threshold: a value exactly equal to {threshold} makes "
         "its column an outlier column."),
        (dict(decompose=False), no_decomposition),
        (dict(per_tensor_x=True, per_tensor_w=True), per_tensor),
        (dict(per_tensor_x=True), per_tensor),
        (dict(per_tensor_w=True), per_tensor),
        (dict(decompose=False, per_tensor_x=True, per_tensor_w=True),
         "you used one absmax for the whole tensor and no decomposition. " + per_tensor),
        (dict(exclude_cols=False), double),
        (dict(exclude_cols=False, mask_entries=False), double),
        (dict(mask_whole_cols=True),
         "you zeroed the whole outlier columns before taking each row's absmax. The reference (as bitsandbytes) "
         "zeroes only the entries with |x| >= threshold, takes the row absmax c_x of what is left (a small entry "
         "of an outlier column counts), quantizes, and only then sets the outlier columns' codes to 0."),
        (dict(w_absmax_inliers_only=True),
         "you took w's row absmax over the non-outlier columns only; c_w[o] = max |w[o, :]| over the whole row, "
         "outlier columns included (the int8 weight is stored once, before any x is seen)."),
        (dict(outlier_w="int8"),
         "your float part used the de-quantized int8 weight columns (what bitsandbytes' inference does); this "
         "exercise (the paper's version) multiplies x[:, O] with the original float columns w[:, O]."),
    ]
    for kwargs, message in variants:
        mistake = _int8_by_hand(x, w, threshold, **kwargs).double()
        if torch.allclose(mistake, expected, rtol=INT8_RTOL, atol=INT8_ATOL):
            continue  # this case cannot tell that mistake apart
        if torch.allclose(got, mistake, rtol=3 * INT8_RTOL, atol=3 * INT8_ATOL):
            return message
    if torch.allclose(got, (x.double() @ w.double().t()), rtol=1e-5, atol=1e-5):
        if threshold <= 0:
            return ("threshold <= 0 turns the decomposition off (no outlier columns at all): the whole product "
                    "goes through int8. You returned the plain float product x @ w.T.")
        return "you returned the plain float product x @ w.T: only the outlier columns stay in float."
    return None


def check_int8_outlier_matmul(fn) -> bool:
    """fn(x, w, threshold) -> x @ w.T computed the LLM.int8() way: float32 [tokens, out], for x float32
    [tokens, in] and w float32 [out, in]. Exactly what course_lib.bnb.int8.llm_int8_linear(x, w,
    threshold=threshold, outlier_weight=w).out computes (the paper's version, float weight for the outliers):

    1. Outlier columns O: the columns of x holding any |x| >= threshold (>=, not >). threshold <= 0 means no
       decomposition: O is empty.
    2. int8 part:
       a. x_in = x with every entry |x| >= threshold set to 0 (only those entries: the other entries of an
          outlier column stay, and can set their row's absmax);
       b. per row t: c_x[t] = max |x_in[t, :]|, x_q[t] = round(x_in[t] * 127 / c_x[t]) (torch.round), in int8;
          a row with c_x[t] = 0 gets codes 0;
       c. x_q[:, O] = 0: the outlier columns take no part in the int8 product;
       d. per row o of w (the whole row, outlier columns included): c_w[o] = max |w[o, :]|,
          w_q[o] = round(w[o] * 127 / c_w[o]) in int8 (a zero row gets codes 0);
       e. y = (x_q @ w_q.T in integers) * c_x[t] * c_w[o] / 127² (as float32).
    3. float part: y += x[:, O] @ w[:, O].T with the original float32 weight columns.

    Checked on x of shapes (1, 32), (4, 64), (7, 96), (16, 128) with 1-3 planted outlier columns (|x| 20..60,
    the rest N(0, 1)), w of shapes (8, 32), (16, 64), (24, 96), (64, 128) (std 0.05), threshold 6.0, seeds 0, 1, 2;
    then threshold 0.0, no outliers at all, values exactly at the threshold, and zero rows. (The inputs are nudged
    so that no value sits near a rounding tie: any order of the arithmetic gives the same int8 codes.)
    Tolerance: |got - expected| <= 1e-4 + 1e-4 * |expected| for every entry.
    """
    labels, cases = int8_outlier_matmul_cases()
    return check_tensor_cases(
        "int8_outlier_matmul", fn, cases, _int8_reference, atol=INT8_ATOL, rtol=INT8_RTOL, labels=labels,
        diagnose=_diagnose_int8,
        hint="O = columns with any |x| >= threshold (none if threshold <= 0); x_in = x with those entries zeroed; "
             "codes = round(v * 127 / absmax) per row of x_in and of w; zero the outlier columns' x codes; integer "
             "matmul times c_x c_w^T / 127²; plus x[:, O] @ w[:, O].T in float.")


# --- double quantization ----------------------------------------------------------------------------------------

def check_double_quant_bits(fn) -> bool:
    """fn(blocksize, blocksize2) -> bits per parameter of NF4 with double quantization: 4-bit codes, one 8-bit
    absmax code per block of `blocksize` weights, and one float32 scale per block of `blocksize2` absmaxes
    (leave out the per-tensor constants: the code tables and the one float32 offset)."""
    cases = [((b, b2), bnb_nf4.bits_per_param(b, True, b2))
             for b, b2 in ((64, 256), (32, 256), (128, 256), (64, 128), (256, 64), (4096, 256))]
    return check_cases("double_quant_bits", fn, cases, rel=1e-9,
                       hint="4 + 8 / blocksize + 32 / (blocksize * blocksize2): the 8-bit absmax is shared by "
                            "`blocksize` weights, the float32 scale by blocksize * blocksize2 weights.")


EXERCISES = {
    "nf4_roundtrip": check_nf4_roundtrip,
    "int8_outlier_matmul": check_int8_outlier_matmul,
    "double_quant_bits": check_double_quant_bits,
}
