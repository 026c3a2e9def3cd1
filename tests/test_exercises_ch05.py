"""Chapter 05's tensor exercises: plausible wrong solutions fail with a hint that names their mistake, correct
variants of the solution pass, the cases cover shapes, seeds and edge cases, and check_tensor_cases itself.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails.)
"""

from __future__ import annotations

import re
import time

import pytest
import torch

from course_lib.bnb import int8 as bnb_int8
from course_lib.bnb import nf4 as bnb_nf4
from course_lib.exercises import ch05, check_tensor_cases, load_solutions
from exercise_helpers import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NF4 = bnb_nf4.code_values("nf4")


SOL = load_solutions("ch05")


# --- plausible wrong NF4 solutions ---------------------------------------------------------------------------------

def _nearest(normed, code=NF4):
    return code[(normed[..., None] - code).abs().argmin(dim=-1)]


def nf4_per_tensor_absmax(w, blocksize):
    absmax = w.abs().max()  # one absmax for everything
    return _nearest(w / absmax) * absmax


def nf4_per_row_absmax(w, blocksize):
    absmax = w.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)  # along the last dimension
    return _nearest(w / absmax) * absmax


def nf4_uniform_int4(w, blocksize):
    blocks = w.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    grid = torch.arange(-7, 8, dtype=torch.float32) / 7  # absmax int4
    return (_nearest(blocks / absmax, grid) * absmax).reshape(w.shape)


def nf4_uniform_16_levels(w, blocksize):
    blocks = w.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    return (_nearest(blocks / absmax, torch.linspace(-1, 1, 16)) * absmax).reshape(w.shape)


def nf4_no_scale_back(w, blocksize):
    blocks = w.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    return _nearest(blocks / absmax).reshape(w.shape)  # the code values, not de-quantized


def nf4_round_index(w, blocksize):
    blocks = w.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    idx = torch.round((blocks / absmax + 1) * 7.5).long()  # as if the values were evenly spaced
    return (NF4[idx] * absmax).reshape(w.shape)


def nf4_nan_on_zero_block(w, blocksize):
    # 0 / 0 on a zero block. (Picking a code usually launders the NaN: argmin and bucketize map it to some code,
    # times absmax 0 is 0. Keeping the NaN where the block is zero shows what the diagnosis says about it.)
    blocks = w.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    normed = blocks / absmax
    return torch.where(normed.isnan(), normed, _nearest(normed) * absmax).reshape(w.shape)


NF4_MISTAKES = [
    (nf4_per_tensor_absmax, "one absmax for the whole tensor"),
    (nf4_per_row_absmax, "one absmax per row"),
    (nf4_uniform_int4, "uniform int4 grid"),
    (nf4_uniform_16_levels, "evenly spaced"),
    (nf4_no_scale_back, "forgot to multiply back"),
    (nf4_round_index, "rounding an index"),
    (nf4_nan_on_zero_block, "block of zeros"),
]


@pytest.mark.parametrize("wrong, named", NF4_MISTAKES, ids=[f.__name__ for f, _ in NF4_MISTAKES])
def test_nf4_wrong_solution_fails_and_the_hint_names_the_mistake(wrong, named, capsys):
    ok, out = run(ch05.check_nf4_roundtrip, wrong, capsys)
    assert ok is False
    assert out.startswith("[x] nf4_roundtrip: for ") and "Hint: " in out
    assert named in out.split("Hint: ", 1)[1], out


def _nf4_midpoints(w, blocksize):
    # a correct variant: bucketize against the midpoints, multiply by the reciprocal, the learner's given table
    code = bnb_nf4.code_values("nf4")
    blocks = w.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    normed = blocks * (1 / absmax.clamp_min(1e-30))
    idx = torch.bucketize(normed, (code[1:] + code[:-1]) / 2)
    return (code[idx] * absmax).reshape(w.shape)


def _nf4_loop(w, blocksize):
    # a correct variant: one block at a time, division, float64 distances
    flat = w.reshape(-1)
    out = torch.empty_like(flat)
    code = bnb_nf4.code_values("nf4").double()
    for start in range(0, flat.numel(), blocksize):
        block = flat[start:start + blocksize].double()
        m = block.abs().max()
        normed = block / m if m > 0 else block
        out[start:start + blocksize] = (code[(normed[:, None] - code).abs().argmin(1)] * m).float()
    return out.reshape(w.shape)


@pytest.mark.parametrize("variant", [SOL.nf4_roundtrip, _nf4_midpoints, _nf4_loop])
def test_nf4_correct_variants_pass(variant, capsys):
    ok, out = run(ch05.check_nf4_roundtrip, variant, capsys)
    assert ok is True and out.startswith("[ok] nf4_roundtrip: correct (17 cases)."), out
    assert "Hint" not in out


def test_nf4_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch05.nf4_roundtrip_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2}
    shapes = {tuple(w.shape) for w, _ in cases}
    assert {(64,), (4, 64), (8, 128), (3, 5, 64)} <= shapes and {w.dim() for w, _ in cases} == {1, 2, 3}
    assert {bs for _, bs in cases} == {32, 64}
    assert all(w.numel() % bs == 0 and w.dtype == torch.float32 for w, bs in cases)
    # the edge cases: a block of zeros among non-zero blocks; a single outlier far above the rest
    zero_block = [(w, bs) for w, bs in cases if (w.reshape(-1, bs).abs().amax(1) == 0).any()]
    assert zero_block and all((w.reshape(-1, bs).abs().amax(1) > 0).any() for w, bs in zero_block)
    assert any(w.abs().max() > 20 * w.std() for w, _ in cases)
    # the random cases are different tensors (seeds really used), the weights are small normal values
    firsts = [w for (w, _), label in zip(cases, labels) if label.endswith("shape (64,), blocksize 64")]
    assert len(firsts) == 3 and not torch.equal(firsts[0], firsts[1])
    assert 0.01 < float(torch.cat([w.reshape(-1) for w, _ in cases[:15]]).std()) < 0.03


# --- plausible wrong LLM.int8() solutions -------------------------------------------------------------------------

def _quant_rows(v):
    absmax = v.abs().amax(dim=1)
    q = torch.round(v * 127 / absmax.clamp_min(1e-30)[:, None])
    return q, absmax


def _int8_product(xq, cx, wq, cw):
    return (xq @ wq.t()) * cx[:, None] * cw[None, :] / 127**2  # the codes' products are exact in float32 here


def int8_no_decomposition(x, w, threshold):
    return _int8_product(*_quant_rows(x), *_quant_rows(w))


def int8_per_tensor_scales(x, w, threshold):
    big = x.abs() >= threshold if threshold > 0 else torch.zeros_like(x, dtype=torch.bool)
    cols = big.any(0)
    x_in = x.masked_fill(cols[None, :], 0)
    cx, cw = x_in.abs().max(), w.abs().max()  # one scale per tensor
    xq, wq = torch.round(x_in * 127 / cx), torch.round(w * 127 / cw)
    return (xq @ wq.t()) * cx * cw / 127**2 + x[:, cols] @ w[:, cols].t()


def int8_double_counting(x, w, threshold):
    big = x.abs() >= threshold if threshold > 0 else torch.zeros_like(x, dtype=torch.bool)
    cols = big.any(0)
    y = _int8_product(*_quant_rows(x.masked_fill(big, 0)), *_quant_rows(w))  # outlier columns' codes stay
    return y + x[:, cols] @ w[:, cols].t()


def int8_strict_threshold(x, w, threshold):
    big = x.abs() > threshold if threshold > 0 else torch.zeros_like(x, dtype=torch.bool)  # > instead of >=
    cols = big.any(0)
    xq, cx = _quant_rows(x.masked_fill(big, 0))
    xq[:, cols] = 0
    return _int8_product(xq, cx, *_quant_rows(w)) + x[:, cols] @ w[:, cols].t()


def int8_whole_columns_zeroed(x, w, threshold):
    big = x.abs() >= threshold if threshold > 0 else torch.zeros_like(x, dtype=torch.bool)
    cols = big.any(0)
    xq, cx = _quant_rows(x.masked_fill(cols[None, :], 0))  # the whole column out before the absmax
    return _int8_product(xq, cx, *_quant_rows(w)) + x[:, cols] @ w[:, cols].t()


def int8_dequantized_outlier_weight(x, w, threshold):
    big = x.abs() >= threshold if threshold > 0 else torch.zeros_like(x, dtype=torch.bool)
    cols = big.any(0)
    xq, cx = _quant_rows(x.masked_fill(big, 0))
    xq[:, cols] = 0
    wq, cw = _quant_rows(w)
    w_deq = wq * cw[:, None] / 127  # bitsandbytes' inference path, not the paper's
    return _int8_product(xq, cx, wq, cw) + x[:, cols] @ w_deq[:, cols].t()


def int8_nan_on_zero_rows(x, w, threshold):
    big = x.abs() >= threshold if threshold > 0 else torch.zeros_like(x, dtype=torch.bool)
    cols = big.any(0)
    x_in = x.masked_fill(big, 0)
    cx, cw = x_in.abs().amax(1), w.abs().amax(1)
    xq = torch.round(x_in * 127 / cx[:, None])  # 0 / 0 on a zero row
    xq[:, cols] = 0
    return _int8_product(xq, cx, torch.round(w * 127 / cw[:, None]), cw) + x[:, cols] @ w[:, cols].t()


def int8_threshold_zero_decomposes(x, w, threshold):
    big = x.abs() >= threshold  # with threshold 0 every column is an outlier column: a float product
    cols = big.any(0)
    xq, cx = _quant_rows(x.masked_fill(big, 0))
    xq[:, cols] = 0
    return _int8_product(xq, cx, *_quant_rows(w)) + x[:, cols] @ w[:, cols].t()


INT8_MISTAKES = [
    (int8_no_decomposition, "no decomposition"),
    (int8_per_tensor_scales, "one absmax for the whole tensor"),
    (int8_double_counting, "counted twice"),
    (int8_strict_threshold, "|x| > threshold"),
    (int8_whole_columns_zeroed, "zeroed the whole outlier columns"),
    (int8_dequantized_outlier_weight, "de-quantized int8 weight columns"),
    (int8_nan_on_zero_rows, "NaN"),
    (int8_threshold_zero_decomposes, "threshold <= 0 turns the decomposition off"),
    (lambda x, w, threshold: x @ w.t(), "plain float product"),
]


@pytest.mark.parametrize("wrong, named", INT8_MISTAKES, ids=[n for _, n in INT8_MISTAKES])
def test_int8_wrong_solution_fails_and_the_hint_names_the_mistake(wrong, named, capsys):
    ok, out = run(ch05.check_int8_outlier_matmul, wrong, capsys)
    assert ok is False
    assert out.startswith("[x] int8_outlier_matmul: for ") and "Hint: " in out
    assert named in out.split("Hint: ", 1)[1], out


def test_the_strict_threshold_mistake_is_caught_by_the_value_at_the_threshold(capsys):
    ok, out = run(ch05.check_int8_outlier_matmul, int8_strict_threshold, capsys)
    assert not ok and "exactly at the threshold" in out  # the only case that can tell > from >=


def _int8_other_order(x, w, threshold):
    # a correct variant: x / absmax * 127, float matmul of the codes, index lists, float part added first
    cols = torch.nonzero((x.abs() >= threshold).any(0)).flatten() if threshold > 0 else torch.empty(0, dtype=torch.long)
    x_in = torch.where(x.abs() >= threshold, torch.zeros(()), x) if threshold > 0 else x.clone()
    cx = x_in.abs().amax(1, keepdim=True)
    xq = torch.where(cx > 0, torch.round(x_in / torch.where(cx > 0, cx, 1) * 127), torch.zeros(()))
    xq[:, cols] = 0
    cw = w.abs().amax(1, keepdim=True)
    wq = torch.where(cw > 0, torch.round(w / torch.where(cw > 0, cw, 1) * 127), torch.zeros(()))
    out = x[:, cols] @ w[:, cols].t()
    return out + (xq @ wq.t()) * (cx / 127) * (cw.t() / 127)


def _int8_course_lib_pieces(x, w, threshold):
    # a correct variant built from course_lib.bnb's own pieces (vectorwise_quant, int8_matmul)
    cols = bnb_int8.outlier_columns(x, threshold)
    x_in = x.masked_fill(x.abs() >= threshold, 0) if cols.numel() else x
    xq, cx = bnb_int8.vectorwise_quant(x_in)
    xq[:, cols] = 0
    wq, cw = bnb_int8.vectorwise_quant(w)
    y = bnb_int8.int8_matmul(xq, wq).double() * cx.double()[:, None] * cw.double()[None, :] / 127**2
    return (y + x[:, cols].double() @ w[:, cols].double().t()).float()


@pytest.mark.parametrize("variant", [SOL.int8_outlier_matmul, _int8_other_order, _int8_course_lib_pieces])
def test_int8_correct_variants_pass(variant, capsys):
    ok, out = run(ch05.check_int8_outlier_matmul, variant, capsys)
    assert ok is True and out.startswith("[ok] int8_outlier_matmul: correct (16 cases)."), out


def _int8_in_order(order, dtype):
    # a correct solution with the scale arithmetic in a given order and precision
    def quant(v):
        v = v.to(dtype)
        c = v.abs().amax(1, keepdim=True)
        c1 = torch.where(c > 0, c, torch.ones_like(c))
        t = {"x*127/c": lambda: v * 127 / c1, "x/c*127": lambda: v / c1 * 127,
             "x*(127/c)": lambda: v * (127 / c1), "x/(c/127)": lambda: v / (c1 / 127)}[order]()
        return t.round(), c

    def fn(x, w, threshold):
        big = x.abs() >= threshold if threshold > 0 else torch.zeros_like(x, dtype=torch.bool)
        cols = big.any(0)
        xq, cx = quant(x.masked_fill(big, 0))
        xq[:, cols] = 0
        wq, cw = quant(w)
        return (xq @ wq.t()) * cx * cw.t() / 127**2 + x[:, cols].to(dtype) @ w[:, cols].to(dtype).t()
    return fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("order", ["x*127/c", "x/c*127", "x*(127/c)", "x/(c/127)"])
def test_int8_any_order_of_the_arithmetic_passes(order, dtype, capsys):
    # one int8 code rounded the other way moves an output by ~1e-3, ten times the tolerance: the cases are nudged
    # clear of rounding ties so that every correct formulation gives the same codes
    ok, out = run(ch05.check_int8_outlier_matmul, _int8_in_order(order, dtype), capsys)
    assert ok is True, out


def test_int8_cases_are_clear_of_rounding_ties():
    _, cases = ch05.int8_outlier_matmul_cases()
    for x, w, t in cases:
        x_in = x.masked_fill(x.abs() >= t, 0) if t > 0 else x
        for v in (x_in.double(), w.double()):
            c = v.abs().amax(1, keepdim=True)
            scaled = v * 127 / torch.where(c > 0, c, torch.ones_like(c))
            assert ((scaled - scaled.floor() - 0.5).abs() > 0.09).all()


def test_int8_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch05.int8_outlier_matmul_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2}
    shapes = {(x.shape[0], x.shape[1], w.shape[0]) for x, w, _ in cases}
    assert len(shapes) >= 4 and all(x.shape[1] == w.shape[1] for x, w, _ in cases)
    assert min(t for t, _, _ in shapes) == 1 and max(t for t, _, _ in shapes) == 16
    assert all(32 <= i <= 128 and 8 <= o <= 64 for _, i, o in shapes)
    assert all(x.dtype == w.dtype == torch.float32 for x, w, _ in cases)
    random_cases = [c for c, label in zip(cases, labels) if label.startswith("seed")]
    assert len(random_cases) == 12
    for x, _, t in random_cases:  # planted outlier columns, magnitudes 20..60, threshold 6
        big = x.abs() >= t
        assert t == 6.0 and 1 <= int(big.any(0).sum()) <= 3
        assert 20 <= float(x.abs()[big].min()) and float(x.abs().max()) <= 60
    # edge cases: threshold 0 with outliers present, no outliers at all, |x| == threshold, zero rows
    assert any(t == 0 and (x.abs() >= 6).any() for x, _, t in cases)
    assert any(t == 6.0 and not (x.abs() >= t).any() for x, _, t in cases)
    at = [(x, t) for x, _, t in cases if t > 0 and (x.abs() == t).any()]
    assert at  # the value at the threshold is its column's largest: with > instead of >=, no outlier column there
    assert all((x[:, (x.abs() == t).any(0)].abs() <= t).all() for x, t in at)
    assert all(((x.abs() >= t) & (x.abs() > t)).any() for x, t in at)  # an ordinary outlier column too
    assert any((x == 0).all(1).any() and (w == 0).all(1).any() for x, w, _ in cases)
    assert any(((x.abs() < t) & (x != 0)).sum(1).eq(0).logical_and(x.abs().amax(1) > 0).any()
               for x, _, t in cases if t > 0)  # a token whose only non-zero entries are outliers


@pytest.mark.parametrize("mistake", [dict(decompose=False), dict(per_tensor_x=True, per_tensor_w=True),
                                     dict(exclude_cols=False), dict(strict=True), dict(mask_whole_cols=True),
                                     dict(w_absmax_inliers_only=True), dict(outlier_w="int8")], ids=str)
def test_every_diagnosed_int8_mistake_is_visible_in_some_case(mistake):
    _, cases = ch05.int8_outlier_matmul_cases()
    assert all(torch.allclose(ch05._int8_by_hand(*a), ch05._int8_reference(*a), atol=1e-5, rtol=1e-5) for a in cases)
    assert any(not torch.allclose(ch05._int8_by_hand(*a, **mistake), ch05._int8_reference(*a),
                                  atol=10 * ch05.INT8_ATOL, rtol=10 * ch05.INT8_RTOL) for a in cases)


def test_the_reference_matches_the_float_product_roughly():
    # sanity: the decomposition is close to x @ w.T (int8 error only), much closer than plain int8 with outliers
    _, cases = ch05.int8_outlier_matmul_cases()
    x, w, t = cases[7]
    exact = x @ w.t()
    mixed = (ch05._int8_reference(x, w, t) - exact).norm() / exact.norm()
    plain = (ch05._int8_reference(x, w, 0.0) - exact).norm() / exact.norm()
    assert mixed < 0.02 and plain > 3 * mixed


def test_double_quant_bits_wrong_formula_fails(capsys):
    ok, out = run(ch05.check_double_quant_bits, lambda b, b2: 4 + 32 / b, capsys)  # no double quantization
    assert not ok and "Hint: 4 + 8 / blocksize" in out


def test_checks_are_fast(capsys):
    for name, check in ch05.EXERCISES.items():
        start = time.perf_counter()
        check(getattr(SOL, name))
        check(lambda *a, name=name: getattr(SOL, name)(*a) * 1.01)  # a wrong answer runs the diagnosis too
        assert time.perf_counter() - start < 2.0, name  # about 0.3 s each here; the budget is 1 s per check
    capsys.readouterr()


# --- check_tensor_cases itself -------------------------------------------------------------------------------------

def _cases():
    return [(torch.arange(6.0).reshape(2, 3),), (torch.ones(4),)]


def _double(v):
    return 2 * v


@pytest.mark.parametrize("fn, message", [
    (lambda v: (2 * v).tolist(), "expected a torch.Tensor of shape (2, 3), got list"),
    (lambda v: (2 * v).reshape(-1), "expected a tensor of shape (2, 3), got one of shape (6,)"),
    (lambda v: v > 0, "dtype torch.bool"),
    (lambda v: 2 * v + torch.tensor([0.0, 0.0, float("nan")]), "2 values are NaN"),
    (lambda v: 2 * v + torch.tensor([0.0, 0.5, 0.0]), "2 of 6 values differ; the worst, at index (0, 1): expected 2"),
])
def test_check_tensor_cases_says_what_is_wrong(fn, message, capsys):
    ok = check_tensor_cases("double", fn, _cases(), _double, atol=1e-6, rtol=0, hint="twice v.")
    out = capsys.readouterr().out
    assert ok is False and out.startswith("[x] double: for (a tensor of shape (2, 3)): ") and message in out, out


def test_check_tensor_cases_passes_any_real_dtype_and_counts_cases(capsys):
    assert check_tensor_cases("double", lambda v: (2 * v).double(), _cases(), _double, atol=1e-6, rtol=0)
    assert capsys.readouterr().out == "[ok] double: correct (2 cases).\n"


def test_check_tensor_cases_stub_error_labels_and_diagnosis(capsys):
    def stub(v):
        raise NotImplementedError

    calls = []

    def diagnose(args, got):
        calls.append(args)
        return "you added one." if torch.equal(got, 2 * args[0] + 1) else None

    assert not check_tensor_cases("double", stub, _cases(), _double, atol=0, rtol=0, diagnose=diagnose)
    assert "[ ] double: not attempted yet" in capsys.readouterr().out
    assert not check_tensor_cases("double", lambda v: v[99], _cases(), _double, atol=0, rtol=0, labels=["A", "B"])
    assert capsys.readouterr().out.startswith("[x] double: for A it raised IndexError")
    assert check_tensor_cases("double", _double, _cases(), _double, atol=0, rtol=0, diagnose=diagnose, hint="h")
    assert calls == [] and "Hint" not in capsys.readouterr().out  # no hint, no diagnosis before a wrong attempt
    assert not check_tensor_cases("double", lambda v: 2 * v + 1, _cases(), _double, atol=0, rtol=0,
                                  diagnose=diagnose, hint="twice v.")
    assert capsys.readouterr().out.rstrip().endswith("Hint: you added one.")
    assert not check_tensor_cases("double", lambda v: 3 * v, _cases(), _double, atol=0, rtol=0,
                                  diagnose=lambda a, g: 1 / 0, hint="twice v.")  # a failing diagnosis is ignored
    assert capsys.readouterr().out.rstrip().endswith("Hint: twice v.")


def test_check_tensor_cases_gives_the_learner_copies(capsys):
    def in_place(v):
        v.mul_(2)  # edits its argument, then returns it
        return v

    assert check_tensor_cases("double", in_place, _cases(), _double, atol=0, rtol=0)
    x = torch.ones(3)
    assert not check_tensor_cases("double", lambda v: v.mul_(3), [(x,)], _double, atol=0, rtol=0)
    assert torch.equal(x, torch.ones(3))  # the case's tensor is untouched
    capsys.readouterr()
