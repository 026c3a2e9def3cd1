"""Chapter 02's tensor exercises: plausible wrong solutions fail with a hint that names their mistake, correct
variants of the solutions pass, the cases cover shapes, seeds and edge cases (clear of rounding ties), and garbage
never makes a check raise.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails.)
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from course_lib import quant
from course_lib.exercises import ch02, load_solutions
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch02")


@pytest.mark.parametrize("name, n_cases", [("fake_quantize_groups", 19), ("pack_signed_int4", 21)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    check = ch02.EXERCISES[name]
    ok, out = run(check, getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out

    def stub(*args):
        raise NotImplementedError

    ok, out = run(check, stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


def test_warm_ups_are_the_four_formulas():
    assert set(ch02.WARM_UPS) == {"scale_zero_point", "quantize_value", "max_rounding_error", "packed_int4_bytes"}
    assert set(ch02.EXERCISES) - set(ch02.WARM_UPS) == {"fake_quantize_groups", "pack_signed_int4"}


# --- 1. fake_quantize_groups: wrong solutions -------------------------------------------------------------------------

def _groups(w, g):
    return w.reshape(w.shape[0], -1, g)


def _affine(blocks, bits, lo, hi, *, z_round=True, floor=False):
    qmax = 2**bits - 1
    s = (hi - lo) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    z = torch.round(-lo / s) if z_round else -lo / s
    r = torch.floor if floor else torch.round
    q = torch.clamp(r(blocks / s + z) if not z_round else r(blocks / s) + z, 0, qmax)
    return s * (q - z)


def fq_no_widening(w, bits, g):
    b = _groups(w, g)
    return _affine(b, bits, b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)).reshape(w.shape)


def fq_float_minimum(w, bits, g):
    # Q4_1's recipe: w = s * q + min, no integer zero point
    b = _groups(w, g)
    lo, hi = b.amin(-1, keepdim=True).clamp(max=0), b.amax(-1, keepdim=True).clamp(min=0)
    s = (hi - lo) / (2**bits - 1)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (s * torch.clamp(torch.round((b - lo) / s), 0, 2**bits - 1) + lo).reshape(w.shape)


def fq_zero_point_negated(w, bits, g):
    b = _groups(w, g)
    lo, hi = b.amin(-1, keepdim=True).clamp(max=0), b.amax(-1, keepdim=True).clamp(min=0)
    s = torch.where(hi > lo, (hi - lo) / (2**bits - 1), torch.ones_like(hi))
    z = torch.round(lo / s)
    return (s * (torch.clamp(torch.round(b / s) + z, 0, 2**bits - 1) - z)).reshape(w.shape)


def fq_2_to_the_bits(w, bits, g):
    b = _groups(w, g)
    lo, hi = b.amin(-1, keepdim=True).clamp(max=0), b.amax(-1, keepdim=True).clamp(min=0)
    s = torch.where(hi > lo, (hi - lo) / 2**bits, torch.ones_like(hi))
    z = torch.round(-lo / s)
    return (s * (torch.clamp(torch.round(b / s) + z, 0, 2**bits - 1) - z)).reshape(w.shape)


def fq_per_row(w, bits, g):
    return quant.fake_quantize(w, bits, symmetric=False, granularity="channel")


def fq_per_tensor(w, bits, g):
    return quant.fake_quantize(w, bits, symmetric=False, granularity="tensor")


def fq_interleaved(w, bits, g):
    b = w.reshape(w.shape[0], g, -1)  # "groups of g": the wrong reshape, group k = columns k, k + G, ...
    lo, hi = b.amin(1, keepdim=True).clamp(max=0), b.amax(1, keepdim=True).clamp(min=0)
    s = torch.where(hi > lo, (hi - lo) / (2**bits - 1), torch.ones_like(hi))
    z = torch.round(-lo / s)
    return (s * (torch.clamp(torch.round(b / s) + z, 0, 2**bits - 1) - z)).reshape(w.shape)


def fq_symmetric(w, bits, g):
    return quant.fake_quantize(w, bits, granularity="group", group_size=g)


def fq_floor(w, bits, g):
    b = _groups(w, g)
    return _affine(b, bits, b.amin(-1, keepdim=True).clamp(max=0), b.amax(-1, keepdim=True).clamp(min=0),
                   floor=True).reshape(w.shape)


def fq_codes(w, bits, g):
    return quant.quantize(w, bits, symmetric=False, granularity="group", group_size=g).q.float()


def fq_nan_on_zero_group(w, bits, g):
    b = _groups(w, g)
    lo, hi = b.amin(-1, keepdim=True).clamp(max=0), b.amax(-1, keepdim=True).clamp(min=0)
    s = (hi - lo) / (2**bits - 1)  # 0 for a group of zeros
    z = torch.round(-lo / s)
    return (s * (torch.clamp(torch.round(b / s) + z, 0, 2**bits - 1) - z)).reshape(w.shape)


def fq_half_precision(w, bits, g):
    return SOL.fake_quantize_groups(w, bits, g).half().float()  # the result rounded to float16


FQ_MISTAKES = [
    (fq_no_widening, "didn't widen"),
    (fq_float_minimum, "not an integer"),
    (fq_zero_point_negated, "wrong sign"),
    (fq_2_to_the_bits, "2**bits - 1 steps"),
    (fq_per_row, "one scale per row"),
    (fq_per_tensor, "whole tensor"),
    (fq_interleaved, "interleaved"),
    (fq_symmetric, "symmetrically"),
    (fq_floor, "floor"),
    (fq_codes, "integer codes"),
    (fq_nan_on_zero_group, "0 / 0"),
    (fq_half_precision, "float16"),
]


# --- 2. pack_signed_int4: wrong solutions -----------------------------------------------------------------------------

def _u(q):
    return (q.to(torch.int16) + 8).to(torch.uint8)


def pack_high_first(q):
    u = _u(q)
    return u[..., 1::2] | (u[..., 0::2] << 4)


def pack_twos_complement(q):
    u = (q & 0xF).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def pack_no_offset(q):
    u = q.to(torch.uint8)  # -1 -> 255: the whole byte
    return u[..., 0::2] | (u[..., 1::2] << 4)


def pack_offset_7(q):
    u = (q.to(torch.int16) + 7).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def pack_halves(q):
    u = _u(q)
    n = q.shape[-1] // 2
    return u[..., :n] | (u[..., n:] << 4)


def pack_shift_8(q):
    u = _u(q).to(torch.int32)
    return (u[..., 0::2] | (u[..., 1::2] << 8)) & 0xFF


def pack_int8_bytes(q):
    return SOL.pack_signed_int4(q).view(torch.int8)


def pack_rows_in_pairs(q):
    u = _u(q)  # pairs along the first dimension: the wrong shape
    return u[0::2] | (u[1::2] << 4)


PACK_MISTAKES = [
    (pack_high_first, "nibbles are swapped"),
    (pack_twos_complement, "two's-complement"),
    (pack_no_offset, "without shifting them"),
    (pack_offset_7, "offset the codes by 7"),
    (pack_halves, "two halves"),
    (pack_shift_8, "shifted the high nibble by 8"),
    (pack_int8_bytes, "signed bytes"),
    (pack_rows_in_pairs, "last dimension halved"),
]


MISTAKES = [(name, wrong, named) for name, mistakes in (("fake_quantize_groups", FQ_MISTAKES),
                                                          ("pack_signed_int4", PACK_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch02.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and "Hint: " in out
    assert named in hint_of(out), out


# --- correct variants pass ------------------------------------------------------------------------------------------

def _fq_float64(w, bits, g):
    return SOL.fake_quantize_groups(w.double(), bits, g)


def _fq_loops(w, bits, g):
    # group by group with Python floats: the zero point folded the other way, (round(w / s + z)) with integer z
    out = torch.empty_like(w, dtype=torch.float64)
    qmax = 2**bits - 1
    for r in range(w.shape[0]):
        for k in range(0, w.shape[1], g):
            block = w[r, k:k + g].double()
            lo, hi = min(float(block.min()), 0.0), max(float(block.max()), 0.0)
            s = (hi - lo) / qmax if hi > lo else 1.0
            z = round(-lo / s)
            out[r, k:k + g] = (torch.clamp(torch.round(block / s + z), 0, qmax) - z) * s
    return out


def _fq_course_lib(w, bits, g):
    qt = quant.quantize(w, bits, symmetric=False, granularity="group", group_size=g)
    return quant.dequantize(qt)


def _pack_arithmetic(q):
    # a correct variant: + and * instead of | and <<, int64 result
    u = q.to(torch.int64) + 8
    return u[..., 0::2] + 16 * u[..., 1::2]


def _pack_reshape(q):
    u = _u(q).reshape(*q.shape[:-1], -1, 2)
    return u[..., 0] | (u[..., 1] << 4)


CORRECT = {"fake_quantize_groups": [SOL.fake_quantize_groups, _fq_float64, _fq_loops, _fq_course_lib],
           "pack_signed_int4": [SOL.pack_signed_int4, _pack_arithmetic, _pack_reshape]}


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in CORRECT.items() for v in vs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch02.EXERCISES[name], variant, capsys)
    assert ok is True and out.startswith(f"[ok] {name}: correct"), out


# --- the cases ------------------------------------------------------------------------------------------------------

def test_fake_quantize_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch02.fake_quantize_groups_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2} and {b for _, b, _ in cases} == {2, 3, 4, 8}
    assert any(g == w.shape[1] for w, _, g in cases) and {16, 32, 64, 128} <= {g for *_, g in cases}
    blocks = [ch02._group_range(w, g)[0] for w, _, g in cases]
    assert any(bool((b == 0).all(-1).any()) for b in blocks)                     # an all-zero group
    assert any(bool((b > 0).all()) for b in blocks) and any(bool((b < 0).all()) for b in blocks)
    assert any(bool(((b == b[..., :1]).all(-1) & (b[..., 0] != 0)).any()) for b in blocks)  # a constant group
    for w, _, _ in cases:
        assert w.dtype == torch.float32 and w.dim() == 2


def test_the_cases_are_clear_of_rounding_ties():
    # every w / s and every -lo / s at least 0.05 of a step from k + 1/2 (the nudge aims at 0.1)
    for w, bits, g in ch02.fake_quantize_groups_cases()[1]:
        blocks, lo, hi = ch02._group_range(w, g)
        s = torch.where(hi > lo, (hi - lo) / (2**bits - 1), torch.ones_like(hi))
        for t in (blocks / s, -lo / s):
            assert float(((t - t.floor()) - 0.5).abs().min()) > 0.05


def test_nudging_moves_values_a_little_and_keeps_the_maxima():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    nudged = ch02._clear_of_ties(w, 4, 16)
    before, lo0, hi0 = ch02._group_range(w, 16)
    after, lo1, hi1 = ch02._group_range(nudged, 16)
    assert torch.allclose(hi1, hi0) and bool((lo1 <= lo0).all()) and bool((lo1 >= 1.1 * lo0).all())
    step = (hi1 - lo1) / 15
    interior = after != lo1  # a group's minimum may be scaled (to clear its zero point); the rest moves < 0.1 step
    assert bool(((after - before).abs() <= 0.1 * step + 1e-6)[interior].all())
    assert bool((after >= lo1).all() and (after <= hi1).all())


def test_pack_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch02.pack_signed_int4_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2} and {q.dim() for (q,) in cases} == {1, 2, 3}
    assert all(q.dtype == torch.int8 and q.shape[-1] % 2 == 0 for (q,) in cases)
    both = torch.cat([q.reshape(-1) for (q,) in cases])
    assert set(both.tolist()) == set(range(-8, 8))
    assert any(bool((ch02._pack_reference(q) >= 128).any()) for (q,) in cases)


@pytest.mark.parametrize("kwargs, _", ch02._fq_variants(), ids=[str(k) for k, _ in ch02._fq_variants()])
def test_every_diagnosed_fake_quantize_mistake_is_visible_in_some_case(kwargs, _):
    assert any(not torch.allclose(ch02._fq_by_hand(*args, **kwargs), ch02._fq_reference(*args).double(),
                                  atol=10 * ch02.FQ_ATOL, rtol=10 * ch02.FQ_RTOL)
               for args in ch02.fake_quantize_groups_cases()[1])


@pytest.mark.parametrize("kwargs, _", ch02._pack_variants(), ids=[str(k) for k, _ in ch02._pack_variants()])
def test_every_diagnosed_pack_mistake_is_visible_in_the_first_case(kwargs, _):
    (q,) = ch02.pack_signed_int4_cases()[1][0]
    assert not torch.equal(ch02._pack_by_hand(q, **kwargs).double(), ch02._pack_reference(q).double())


def test_the_by_hand_defaults_are_the_references():
    for args in ch02.fake_quantize_groups_cases()[1]:
        assert torch.allclose(ch02._fq_by_hand(*args), ch02._fq_reference(*args).double(), atol=1e-7, rtol=1e-6)
    for args in ch02.pack_signed_int4_cases()[1]:
        assert torch.equal(ch02._pack_by_hand(*args), ch02._pack_reference(*args).long())


# --- garbage never makes a check raise --------------------------------------------------------------------------------

def _garbage(kind):
    def fn(*args):
        d = tuple(args[0].shape)
        return {
            "list": lambda: torch.zeros(d).tolist(),
            "none": lambda: None,
            "numpy": lambda: np.zeros(d, dtype=np.float32),
            "float": lambda: 0.5,
            "bool tensor": lambda: torch.zeros(d, dtype=torch.bool),
            "complex tensor": lambda: torch.zeros(d, dtype=torch.complex64),
            "nan": lambda: torch.full(d, float("nan")),
            "0-d tensor": lambda: torch.tensor(1.0),
        }[kind]()
    return fn


GARBAGE = ["list", "none", "numpy", "float", "bool tensor", "complex tensor", "nan", "0-d tensor"]


@pytest.mark.parametrize("name", ["fake_quantize_groups", "pack_signed_int4"])
@pytest.mark.parametrize("kind", GARBAGE)
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch02.EXERCISES[name], _garbage(kind), capsys)
    assert ok is False and out.startswith(f"[x] {name}: for seed 0,"), out


def test_checks_are_fast(capsys):
    for name in ("fake_quantize_groups", "pack_signed_int4"):
        check = ch02.EXERCISES[name]
        start = time.perf_counter()
        check(getattr(SOL, name))
        check(lambda *a, name=name: getattr(SOL, name)(*a) * 1.01)  # a wrong answer runs the diagnosis too
        assert time.perf_counter() - start < 2.0, name
    capsys.readouterr()
