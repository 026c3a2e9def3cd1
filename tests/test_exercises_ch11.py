"""Chapter 11's tensor exercises: plausible wrong solutions fail with a hint that names their mistake, correct
variants of the solution pass, garbage never makes a check raise, and the cases cover shapes, seeds and edge cases.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails.)
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from course_lib.exercises import ch11, load_solutions
from course_lib.gptq.qlinear import unpack_rows
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SOL = load_solutions("ch11")


# --- the solutions and the stub --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n_cases", [("dequantize_int4", 18), ("packed_matmul", 18)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    check = ch11.EXERCISES[name]
    ok, out = run(check, getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out

    def stub(*args):
        raise NotImplementedError

    ok, out = run(check, stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


# --- plausible wrong dequantize_int4 solutions -----------------------------------------------------------------------

def _dequant(qweight, scales, zeros, group_size, *, nibble, group=lambda i, g, n_groups: i // g, zero=True):
    """A loop over the nibble index j, as a learner writes it, with the unpacking and the group index passed in."""
    k, n = 8 * qweight.shape[0], qweight.shape[1]
    W = torch.empty(k, n, dtype=torch.float32)
    for j in range(8):
        u = nibble(qweight, j)
        rows = torch.arange(j, k, 8)
        g = group(rows, group_size, k // group_size)
        W[rows] = scales[g].float() * ((u - zeros[g]) if zero else u)
    return W


def dq_high_first(qweight, scales, zeros, group_size):
    return _dequant(qweight, scales, zeros, group_size, nibble=lambda w, j: (w >> (28 - 4 * j)) & 0xF)


def dq_no_mask(qweight, scales, zeros, group_size):
    return _dequant(qweight, scales, zeros, group_size, nibble=lambda w, j: w >> (4 * j))


def dq_top_nibble_unmasked(qweight, scales, zeros, group_size):
    # "the top nibble needs no mask: nothing above it" -- but >> on a negative int32 fills with 1s
    return _dequant(qweight, scales, zeros, group_size,
                    nibble=lambda w, j: w >> 28 if j == 7 else (w >> (4 * j)) & 0xF)


def dq_group_mod(qweight, scales, zeros, group_size):
    return _dequant(qweight, scales, zeros, group_size, nibble=lambda w, j: (w >> (4 * j)) & 0xF,
                    group=lambda i, g, n_groups: i % n_groups)


def dq_group_of_packed_row(qweight, scales, zeros, group_size):
    # loops over the packed rows r and uses r // group_size as the group
    k, n = 8 * qweight.shape[0], qweight.shape[1]
    W = torch.empty(k, n)
    for r in range(k // 8):
        for j in range(8):
            u = (qweight[r] >> (4 * j)) & 0xF
            g = r // group_size
            W[8 * r + j] = scales[g].float() * (u - zeros[g]).float()
    return W


def dq_scale_of_packed_row(qweight, scales, zeros, group_size):
    # vectorised; the scales expanded to one row per packed row, then each repeated for its 8 inputs
    k = 8 * qweight.shape[0]
    u = ((qweight[:, None, :] >> (4 * torch.arange(8, dtype=torch.int32))[None, :, None]) & 0xF).reshape(k, -1)
    g = torch.arange(k) // group_size
    s = scales.float().repeat_interleave(group_size, 0)[:k // 8].repeat_interleave(8, 0)
    return s * (u - zeros[g]).float()


def dq_scale_indexed_by_packed_row(qweight, scales, zeros, group_size):
    # scales[r] for packed row r: out of range (k/8 packed rows, k/g groups)
    return _dequant(qweight, scales, zeros, group_size, nibble=lambda w, j: (w >> (4 * j)) & 0xF,
                    group=lambda i, g, n_groups: i // 8)


def dq_no_zero_point(qweight, scales, zeros, group_size):
    return _dequant(qweight, scales, zeros, group_size, nibble=lambda w, j: (w >> (4 * j)) & 0xF, zero=False)


def dq_float16(qweight, scales, zeros, group_size):
    # vectorised, scales left in float16: float16 * an integer tensor stays float16
    k = 8 * qweight.shape[0]
    u = ((qweight[:, None, :] >> (4 * torch.arange(8, dtype=torch.int32))[None, :, None]) & 0xF).reshape(k, -1)
    g = torch.arange(k) // group_size
    return scales[g] * (u - zeros[g])


def dq_transposed(qweight, scales, zeros, group_size):
    return SOL.dequantize_int4(qweight, scales, zeros, group_size).T  # nn.Linear's (out, in)


def dq_raw_codes(qweight, scales, zeros, group_size):
    return unpack_rows(qweight, 4).float()


DEQUANT_MISTAKES = [
    (dq_high_first, "high-first"),
    (dq_no_mask, "didn't mask"),
    (dq_top_nibble_unmasked, "top-nibble codes (input rows 8r + 7) come out negative"),
    (dq_group_mod, "i % n_groups"),
    (dq_group_of_packed_row, "packed row r = i // 8"),
    (dq_scale_of_packed_row, "packed row r = i // 8"),
    (dq_no_zero_point, "didn't subtract the zero point"),
    (dq_float16, "float16"),
    (dq_transposed, "W has shape (k, n) = (in, out)"),
    (dq_raw_codes, "codes u themselves"),
]


def test_dequantize_transposed_gets_the_shape_message(capsys):
    ok, out = run(ch11.check_dequantize_int4, dq_transposed, capsys)
    assert not ok and "expected a tensor of shape (128, 8), got one of shape (8, 128)" in out


def test_dequantize_index_error_gets_a_hint_about_the_group_index(capsys):
    ok, out = run(ch11.check_dequantize_int4, dq_scale_indexed_by_packed_row, capsys)
    assert not ok
    first, second = out.rstrip("\n").split("\n")
    assert first.startswith("[x] dequantize_int4: for seed 0, k 128") and "raised IndexError" in first
    assert second.startswith("    Hint: ") and "i // group_size" in second and "not with the packed row" in second


def test_the_top_nibble_mistakes_are_caught_by_negative_words(capsys):
    # random codes make half the words negative already; the edge cases make every word negative
    _, cases = ch11.dequantize_int4_cases()
    assert any(bool((q == -1).all()) for q, *_ in cases)
    assert any(bool((q < 0).all()) and not bool((q == -1).all()) for q, *_ in cases)
    ok, out = run(ch11.check_dequantize_int4, dq_top_nibble_unmasked, capsys)
    assert not ok and "for seed 0," in out  # caught on the first case


def _dq_vectorised(qweight, scales, zeros, group_size):
    # a correct variant: all nibbles at once, groups by repeat_interleave, float64 result
    k8, n = qweight.shape
    shifts = 4 * torch.arange(8, dtype=torch.int32)
    u = ((qweight[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(8 * k8, n)
    s = scales.double().repeat_interleave(group_size, dim=0)
    z = zeros.double().repeat_interleave(group_size, dim=0)
    return s * (u.double() - z)


def _dq_unsigned_words(qweight, scales, zeros, group_size):
    # a correct variant: the words as unsigned values in int64, % 16 instead of & 0xF, s*u - s*z, explicit loops
    words = qweight.to(torch.int64) & 0xFFFFFFFF
    k, n = 8 * words.shape[0], words.shape[1]
    W = torch.zeros(k, n)
    for i in range(k):
        u = (words[i // 8] // 16 ** (i % 8)) % 16
        gi = i // group_size
        s = scales[gi].float()
        W[i] = s * u.float() - s * zeros[gi].float()
    return W


def _dq_course_lib(qweight, scales, zeros, group_size):
    # a correct variant from course_lib's unpack_rows
    g = torch.arange(8 * qweight.shape[0]) // group_size
    return scales.float()[g] * (unpack_rows(qweight, 4) - zeros[g]).float()


def test_dequantize_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch11.dequantize_int4_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2}
    shapes = {(8 * q.shape[0], q.shape[1], g) for q, _, _, g in cases}
    assert {k for k, _, _ in shapes} == {128, 256, 384} and {n for _, n, _ in shapes} == {8, 24, 64}
    assert {32, 64, 128} <= {g for _, _, g in shapes} and any(g == k for k, _, g in shapes)
    for q, s, z, g in cases:
        k, n = 8 * q.shape[0], q.shape[1]
        assert q.dtype == torch.int32 and s.dtype == torch.float16 and k % g == 0
        assert s.shape == z.shape == (k // g, n) and bool((s > 0).all())
        assert not z.dtype.is_floating_point and 0 <= int(z.min()) and int(z.max()) <= 15
    # zero points 0 and 15 in one case; the random cases differ between seeds
    assert any(bool((z == 0).any()) and bool((z == 15).any()) and set(z.unique().tolist()) == {0, 15}
               for _, _, z, _ in cases)
    firsts = [q for (q, *_), label in zip(cases, labels) if re.match(r"seed \d, k 128, n 8,", label)]
    assert len(firsts) == 3 and not torch.equal(firsts[0], firsts[1])


def test_the_reference_is_the_formula_on_unpacked_codes():
    for q, s, z, g in ch11.dequantize_int4_cases()[1]:
        gi = torch.arange(8 * q.shape[0]) // g
        formula = s.float()[gi] * (unpack_rows(q, 4) - z[gi]).float()
        assert torch.equal(ch11._reference_weight(q, s, z, g), formula)


@pytest.mark.parametrize("kwargs, _", ch11._DEQUANT_VARIANTS, ids=[str(k) for k, _ in ch11._DEQUANT_VARIANTS])
def test_every_diagnosed_dequantize_mistake_is_visible_in_the_first_case(kwargs, _):
    args = ch11.dequantize_int4_cases()[1][0]
    right = ch11._weight_by_hand(*args)
    assert torch.equal(right, ch11._reference_weight(*args).double())
    assert not torch.allclose(ch11._weight_by_hand(*args, **kwargs), right, atol=1e-3, rtol=1e-3)


# --- plausible wrong packed_matmul solutions -------------------------------------------------------------------------

def _unpack_group(words, n, *, high_first=False):
    shifts = 4 * torch.arange(8, dtype=torch.int32)
    if high_first:
        shifts = 28 - shifts
    return ((words[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(-1, n).float()


def _fold(x, qweight, scales, zeros, group_size, *, high_first=False, zero_sign=-1, x_sum="row", group_rows=None):
    """The fold as a learner writes it, with one choice passed in."""
    m, k = x.shape
    n = qweight.shape[1]
    y = torch.zeros(m, n)
    for gi in range(k // group_size):
        rows = group_rows(gi, k, group_size) if group_rows else torch.arange(gi * group_size, (gi + 1) * group_size)
        x_g = x[:, rows]
        u_g = _unpack_group(qweight, n, high_first=high_first)[rows]
        s_g, z_g = scales[gi].float(), zeros[gi].float()
        sums = x_g.sum(dim=1, keepdim=True) if x_sum == "row" else x_g.sum()
        y += (x_g @ u_g) * s_g + zero_sign * sums * z_g * s_g
    return y


def mm_no_zero_correction(x, qweight, scales, zeros, group_size):
    return _fold(x, qweight, scales, zeros, group_size, zero_sign=0)


def mm_zero_correction_added(x, qweight, scales, zeros, group_size):
    return _fold(x, qweight, scales, zeros, group_size, zero_sign=1)


def mm_scale_once_after_the_loop(x, qweight, scales, zeros, group_size):
    m, k = x.shape
    n = qweight.shape[1]
    acc = torch.zeros(m, n)
    for gi in range(k // group_size):
        sl = slice(gi * group_size, (gi + 1) * group_size)
        acc += x[:, sl] @ (_unpack_group(qweight[gi * group_size // 8:(gi + 1) * group_size // 8], n)
                           - zeros[gi].float())
    return acc * scales[-1].float()  # the scale of the last group, once


def mm_mean_scale(x, qweight, scales, zeros, group_size):
    g = torch.arange(x.shape[1]) // group_size
    u = _unpack_group(qweight, qweight.shape[1])
    return (x @ (u - zeros[g].float())) * scales.float().mean()  # one scale per tensor


def mm_groups_interleaved(x, qweight, scales, zeros, group_size):
    return _fold(x, qweight, scales, zeros, group_size,
                 group_rows=lambda gi, k, g: torch.arange(gi, k, k // g))  # rows gi, gi + G, gi + 2G, ...


def mm_nibbles_high_first(x, qweight, scales, zeros, group_size):
    return _fold(x, qweight, scales, zeros, group_size, high_first=True)


def mm_sum_over_batch(x, qweight, scales, zeros, group_size):
    return _fold(x, qweight, scales, zeros, group_size, x_sum="all")


def mm_no_mask(x, qweight, scales, zeros, group_size):
    u = (qweight[:, None, :] >> (4 * torch.arange(8, dtype=torch.int32))[None, :, None]).reshape(x.shape[1], -1)
    g = torch.arange(x.shape[1]) // group_size
    return x @ (scales.float()[g] * (u - zeros[g]).float())


def mm_packed_rows_not_divided(x, qweight, scales, zeros, group_size):
    # slices the packed rows with the input-row bounds: g/8 rows too many, or none at all past the end
    m, k = x.shape
    n = qweight.shape[1]
    y = torch.zeros(m, n)
    for gi in range(k // group_size):
        x_g = x[:, gi * group_size:(gi + 1) * group_size]
        u_g = _unpack_group(qweight[gi * group_size:(gi + 1) * group_size], n)
        y += (x_g @ u_g) * scales[gi].float() - x_g.sum(1, keepdim=True) * zeros[gi].float() * scales[gi].float()
    return y


MATMUL_MISTAKES = [
    (mm_no_zero_correction, "left out the zero-point correction"),
    (mm_zero_correction_added, "subtract it"),
    (mm_scale_once_after_the_loop, "one scale to the whole output"),
    (mm_mean_scale, "one scale to the whole output"),
    (mm_groups_interleaved, "groups don't line up"),
    (mm_nibbles_high_first, "high-first"),
    (mm_sum_over_batch, "over the batch too"),
    (mm_no_mask, "didn't mask"),
    (mm_packed_rows_not_divided, "x_g and u_g don't match"),
    (lambda x, q, s, z, g: x @ SOL.dequantize_int4(q, s, z, g).half().float(), "float16"),
]


MISTAKES = [(name, wrong, named) for name, mistakes in (("dequantize_int4", DEQUANT_MISTAKES),
                                                          ("packed_matmul", MATMUL_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch11.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and "Hint: " in out
    assert named in hint_of(out), out


def _mm_full_weight(x, qweight, scales, zeros, group_size):
    # a correct result the check cannot tell apart (it compares values only): x @ the whole de-quantized W
    return x @ SOL.dequantize_int4(qweight, scales, zeros, group_size)


def _mm_zero_inside(x, qweight, scales, zeros, group_size):
    # a correct variant: per group, (u_g - z_g) * s_g first, then the matmul; float64
    m, k = x.shape
    n = qweight.shape[1]
    y = torch.zeros(m, n, dtype=torch.float64)
    for gi in range(k // group_size):
        u_g = _unpack_group(qweight[gi * group_size // 8:(gi + 1) * group_size // 8], n).double()
        w_g = (u_g - zeros[gi].double()) * scales[gi].double()
        y += x[:, gi * group_size:(gi + 1) * group_size].double() @ w_g
    return y


def _mm_einsum(x, qweight, scales, zeros, group_size):
    # a correct variant: all groups at once with einsum, the fold in float32
    m, k = x.shape
    n = qweight.shape[1]
    n_groups = k // group_size
    u = _unpack_group(qweight, n).reshape(n_groups, group_size, n)
    xg = x.reshape(m, n_groups, group_size)
    dots = torch.einsum("mgi,gin->mgn", xg, u)  # x_g @ u_g per group
    s, z = scales.float(), zeros.float()
    return (dots * s - xg.sum(-1, keepdim=True) * z * s).sum(dim=1)


CORRECT = {"dequantize_int4": [SOL.dequantize_int4, _dq_vectorised, _dq_unsigned_words, _dq_course_lib],
           "packed_matmul": [SOL.packed_matmul, _mm_full_weight, _mm_zero_inside, _mm_einsum]}


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in CORRECT.items() for v in vs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch11.EXERCISES[name], variant, capsys)
    assert ok is True and out == f"[ok] {name}: correct (18 cases).\n", out


def test_matmul_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch11.packed_matmul_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2}
    assert {x.shape[0] for x, *_ in cases} == {1, 3, 16}
    assert {x.shape[1] for x, *_ in cases} == {128, 256, 384} and {q.shape[1] for _, q, *_ in cases} == {8, 24, 64}
    assert {32, 64, 128} <= {g for *_, g in cases} and any(g == x.shape[1] for x, *_, g in cases)
    for x, q, s, z, g in cases:
        assert x.dtype == torch.float32 and x.shape[1] == 8 * q.shape[0] and s.shape == z.shape == (x.shape[1] // g,
                                                                                                     q.shape[1])
    assert any(bool((q < 0).all()) for _, q, *_ in cases)  # every word negative
    assert any(set(z.unique().tolist()) == {0, 15} for *_, z, _ in cases)
    assert any(bool((x == 1).all(1).any()) and bool((x == 0).all(1).any()) for x, *_ in cases)
    # the outputs are of size about 1, which the absolute tolerance assumes
    rms = [float(ch11._reference_matmul(*c).pow(2).mean().sqrt()) for c in cases]
    assert 0.5 < min(rms) and max(rms) < 4


def test_the_float32_fold_is_well_inside_the_tolerance():
    worst = max(float((SOL.packed_matmul(*c).double() - ch11._reference_matmul(*c)).abs().max())
                for c in ch11.packed_matmul_cases()[1])
    assert worst < ch11.MATMUL_ATOL / 20


@pytest.mark.parametrize("kwargs", [k for k, _ in ch11._matmul_variants()], ids=str)
def test_every_diagnosed_matmul_mistake_is_visible_in_some_case(kwargs):
    cases = ch11.packed_matmul_cases()[1]
    assert all(torch.allclose(ch11._matmul_by_hand(*a), ch11._reference_matmul(*a), atol=1e-9, rtol=1e-9)
               for a in cases)
    assert any(not torch.allclose(ch11._matmul_by_hand(*a, **kwargs), ch11._reference_matmul(*a),
                                  atol=10 * ch11.MATMUL_ATOL, rtol=10 * ch11.MATMUL_RTOL) for a in cases)


# --- garbage never makes a check raise -------------------------------------------------------------------------------

def _garbage(kind):
    def fn(*args):
        shape = (8 * args[-4].shape[0], args[-4].shape[1]) if len(args) == 4 else (args[0].shape[0],
                                                                                   args[1].shape[1])
        return {
            "list": lambda: torch.zeros(shape).tolist(),
            "none": lambda: None,
            "numpy": lambda: np.zeros(shape, dtype=np.float32),
            "float": lambda: 0.5,
            "int tensor": lambda: torch.zeros(shape, dtype=torch.int32),
            "bool tensor": lambda: torch.zeros(shape, dtype=torch.bool),
            "complex tensor": lambda: torch.zeros(shape, dtype=torch.complex64),
            "nan": lambda: torch.full(shape, float("nan")),
            "inf": lambda: torch.full(shape, float("inf")),
            "0-d tensor": lambda: torch.tensor(1.0),
            "int64 codes": lambda: torch.full(shape, 7, dtype=torch.int64),
        }[kind]()
    return fn


GARBAGE = ["list", "none", "numpy", "float", "int tensor", "bool tensor", "complex tensor", "nan", "inf",
           "0-d tensor", "int64 codes"]


@pytest.mark.parametrize("name", ["dequantize_int4", "packed_matmul"])
@pytest.mark.parametrize("kind", GARBAGE)
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch11.EXERCISES[name], _garbage(kind), capsys)
    assert ok is False and out.startswith(f"[x] {name}: for seed 0,"), out


def test_a_nan_result_is_reported(capsys):
    ok, out = run(ch11.check_packed_matmul, _garbage("nan"), capsys)
    assert not ok and "values are NaN" in out


def test_checks_are_fast(capsys):
    for name, check in ch11.EXERCISES.items():
        start = time.perf_counter()
        check(getattr(SOL, name))
        check(lambda *a, name=name: getattr(SOL, name)(*a) * 1.01)  # a wrong answer runs the diagnosis too
        assert time.perf_counter() - start < 2.0, name
    capsys.readouterr()
