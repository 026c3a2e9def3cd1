"""Chapter 01's tensor exercises: the references agree with torch's casts and torchao's MX code, plausible wrong
solutions fail with a hint that names their mistake, correct variants pass, garbage never makes a check raise, and
the cases cover what they claim.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails.)
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import torch

from course_lib import formats
from course_lib.exercises import ch01, load_solutions
from course_lib.formats import rounding
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch01")
FP8_AND_16 = ["fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz", "fp16", "bf16"]


# --- the references ---------------------------------------------------------------------------------------------------

def _probe(name: str) -> torch.Tensor:
    """float32 values that test a rounding to `name`: every finite value, every midpoint (ties), values just beside
    them, and 100,000 random values over the whole range; all within ±max (beyond it torch's casts differ by dtype)."""
    f = formats.get_format(name)
    top = formats.stats(f).max
    grid = sorted({v for v in formats.all_values(f) if math.isfinite(v) and v >= 0})
    mids = [(a + b) / 2 for a, b in zip(grid, grid[1:])]
    near = [v * (1 + d) for v in grid + mids for d in (1e-4, -1e-4)]
    g = torch.Generator().manual_seed(0)
    lo, hi = math.log2(formats.stats(f).min_subnormal) - 2, math.log2(top)
    rand = torch.exp2(lo + (hi - lo) * torch.rand(100_000, generator=g, dtype=torch.float64))
    x = torch.cat([torch.tensor(grid + mids + near, dtype=torch.float64), rand])
    x = torch.cat([x, -x]).float()  # float32 inputs: torch casts a float64 to float16 through float32 (twice rounded)
    return x[x.abs() <= top]


@pytest.mark.parametrize("name", FP8_AND_16)
def test_round_to_format_and_encode_agree_with_torch_casts(name):
    f = formats.get_format(name)
    x = _probe(name)
    cast = x.to(f.torch_dtype())
    assert torch.equal(rounding.round_to_format(x, f), cast.double())
    view = {8: torch.uint8, 16: torch.int16}[f.bits]
    assert torch.equal(rounding.encode(x, f).long(), cast.view(view).long() & ((1 << f.bits) - 1))


@pytest.mark.parametrize("name", FP8_AND_16)
def test_saturation_signed_zero_and_nan(name):
    f = formats.get_format(name)
    top = formats.stats(f).max
    x = torch.tensor([2 * top, -2 * top, math.inf, -math.inf, -0.0, 0.0, math.nan], dtype=torch.float64)
    values = rounding.round_to_format(x, f)
    assert values[:4].tolist() == [top, -top, top, -top] and bool(torch.isnan(values[6]))
    codes = rounding.encode(x, f).long().tolist()
    top_code = max(c for c in range(1 << (f.bits - 1)) if f.decode(c) == top)
    assert codes[:2] == [top_code, top_code | 1 << (f.bits - 1)] and codes[5] == 0
    assert codes[4] == (0 if f.special == "fnuz" else 1 << (f.bits - 1))  # fnuz has no -0
    assert math.isnan(f.decode(codes[6]))
    for c in range(1 << f.bits) if f.bits <= 8 else range(0, 1 << 16, 97):  # codes -> values -> the same codes
        v = f.decode(c)
        if math.isfinite(v):
            assert int(rounding.encode(torch.tensor([v], dtype=torch.float64), f)) == c or (v == 0 and f.special ==
                                                                                         "fnuz")


def test_e2m1_rounding_is_nearest_with_ties_to_even():
    grid = torch.tensor(sorted(set(formats.all_values("fp4_e2m1"))), dtype=torch.float64)
    x = torch.linspace(-7.5, 7.5, 30_001, dtype=torch.float64)
    got = rounding.round_to_format(x, "fp4_e2m1")
    dist = (x[:, None] - grid[None, :]).abs()
    best = dist.min(1, keepdim=True).values
    assert bool(((got[:, None] == grid[None, :]) & (dist == best)).any(1).all())  # a nearest value, always
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0])
    assert rounding.round_to_format(ties, "fp4_e2m1").tolist() == [0, 1, 1, 2, 2, 4, 4, -4]
    assert rounding.encode(torch.tensor(formats.all_values("fp4_e2m1")), "fp4_e2m1").tolist() == list(range(16))


def test_mx_reference_is_torchaos_mxfp4():
    try:
        from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    except Exception:  # torchao is optional
        pytest.skip("torchao is not installed")
    for (x,) in ch01.mxfp4_quantize_cases()[1]:
        if x.dim() < 2:
            x = x[None]
        scale, data = to_mx(x, torch.float4_e2m1fn_x2, 32)
        theirs = to_dtype(data, scale, torch.float4_e2m1fn_x2, 32, torch.float32).reshape(x.shape)
        assert torch.equal(rounding.mx_fake_quantize(x), theirs)
        k = scale.view(torch.uint8).long() - 127
        assert torch.equal(rounding.mx_scale_exponents(x), k.reshape(rounding.mx_scale_exponents(x).shape))


def test_mx_reference_by_its_definition():
    x = torch.tensor([[7.9, -3.0, 0.3] + [0.0] * 29, [0.0] * 32])
    assert rounding.mx_scale_exponents(x).tolist() == [[0], [-127]]
    assert rounding.mx_fake_quantize(x)[0, :3].tolist() == [6.0, -3.0, 0.5] and bool((rounding.mx_fake_quantize(x)[1]
                                                                                       == 0).all())
    with pytest.raises(ValueError, match="multiple of the block size"):
        rounding.mx_fake_quantize(torch.ones(3, 40))


# --- the solutions and the stub ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n_cases", [("encode_e4m3", 16), ("mxfp4_quantize", 16)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    ok, out = run(ch01.EXERCISES[name], getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out

    def stub(*args):
        raise NotImplementedError

    ok, out = run(ch01.EXERCISES[name], stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


def test_warm_ups_are_listed():
    assert set(ch01.WARM_UPS) == {"decode_e4m3", "machine_epsilon", "max_ieee", "quantized_weight_gb"}
    assert set(ch01.EXERCISES) - set(ch01.WARM_UPS) == {"encode_e4m3", "mxfp4_quantize"}


# --- encode_e4m3: plausible wrong solutions ---------------------------------------------------------------------------

def _fields(v):
    a = v.abs()
    e = torch.frexp(a).exponent - 1
    normal = a >= 2.0**-6
    return torch.where(normal, e + 7, 0).long(), torch.where(normal, torch.ldexp(a, 3 - e) - 8, a * 2**9).long()


def _bytes(v, sign=None):
    E, M = _fields(v)
    s = torch.signbit(v).long() if sign is None else sign
    return ((s << 7) | (E << 3) | M).to(torch.uint8)


def _round(x, *, ties="even", clamp=448.0, subnormals=True):
    x = x.double()
    a = x.abs().clamp(max=clamp) if clamp else x.abs()
    e = torch.frexp(a).exponent - 1
    if subnormals:
        e = e.clamp(min=-6)
    step = torch.ldexp(torch.ones_like(a), e - 3)
    n = a / step
    n = {"even": torch.round(n), "away": torch.floor(n + 0.5), "down": torch.floor(n)}[ties]
    return torch.copysign(n * step, x)


def e4_ties_away(x):
    return _bytes(_round(x, ties="away"))


def e4_python_round_half_up(x):
    return _bytes(_round(x, ties="away"))  # the same numbers as floor(n + 0.5), written another way


def e4_truncate(x):
    return _bytes(_round(x, ties="down"))


def e4_clamp_at_480(x):
    return _bytes(_round(x, clamp=480.0))  # 480 would be 0.1111.111: the NaN code


def e4_top_code_0x7f(x):
    codes = SOL.encode_e4m3(x)
    return torch.where(x.abs() >= 448, codes | 1, codes)


def e4_no_saturation(x):
    v = _round(x, clamp=None)
    return _bytes(torch.where(v.abs() > 448, torch.copysign(torch.full_like(v, 480.0), v), v))


def e4_sign_from_less_than(x):
    return _bytes(_round(x), sign=(x < 0).long())


def e4_values(x):
    return _round(x).float()


def e4_int8_view(x):
    return SOL.encode_e4m3(x).view(torch.int8)


def e4_flush_subnormals(x):
    v = _round(x)
    return _bytes(torch.where(x.abs() < 2**-6, 0.0 * v, v))


def e4_no_carry(x):
    x64 = x.double()
    a = x64.abs().clamp(max=448)
    e = torch.frexp(a).exponent - 1
    normal = a >= 2**-6
    E = torch.where(normal, e + 7, 0)
    M = torch.where(normal, torch.round(torch.ldexp(a, 3 - e)) - 8, torch.round(a * 2**9))
    return ((torch.signbit(x64).long() << 7) | (E.long() << 3) | (M.long() & 7)).to(torch.uint8)


def e4_bias_8(x):
    return rounding.encode(x, "fp8_e4m3fnuz")


ENCODE_MISTAKES = [
    (e4_ties_away, "round half to even"),
    (e4_python_round_half_up, "not away from zero"),
    (e4_truncate, "truncated"),
    (e4_clamp_at_480, "0x7F (every exponent and mantissa bit set) is the NaN"),
    (e4_top_code_0x7f, "448, is 0x7E"),
    (e4_no_saturation, "0x7E"),
    (e4_sign_from_less_than, "torch.signbit"),
    (e4_values, "return their codes"),
    (e4_int8_view, "signed int8"),
    (e4_flush_subnormals, "flushed the subnormals"),
    (e4_no_carry, "carry into the exponent"),
    (e4_bias_8, "E4M3FNUZ"),
]


# --- mxfp4_quantize: plausible wrong solutions ------------------------------------------------------------------------

def _mx(x, *, block=32, scale="floor", ties="even", saturate=True, subnormals=True, back=True, axis=-1,
        log2=False, zero_guard=True):
    """MXFP4 as a learner writes it in float32, with one choice passed in."""
    if axis != -1:
        x = x.movedim(axis, -1)
    b = x.reshape(*x.shape[:-1], -1, block)
    amax = b.abs().amax(-1, keepdim=True)
    floor_log2 = torch.log2(amax).floor() if log2 else (torch.frexp(amax).exponent - 1).float()
    s = {"floor": lambda: torch.exp2(floor_log2 - 2), "absmax": lambda: amax / 6,
         "ceil": lambda: torch.exp2(torch.ceil(torch.log2(amax / 6))), "no_emax": lambda: torch.exp2(floor_log2),
         "tensor": lambda: torch.exp2(torch.log2(x.abs().amax()).floor() - 2).expand_as(amax)}[scale]()
    if zero_guard:
        s = torch.where(amax > 0, s, torch.ones_like(s))
    v = b / s
    a = v.abs().clamp(max=6) if saturate else v.abs()
    e = torch.frexp(a).exponent - 1
    if subnormals:
        e = e.clamp(min=0)
    step = torch.exp2((e - 1).float())
    n = torch.round(a / step) if ties == "even" else torch.floor(a / step + 0.5)
    q = torch.copysign(n * step, v)
    out = (q * s if back else q).reshape(x.shape)
    return out.movedim(-1, axis) if axis != -1 else out


def mx_no_zero_guard(x):
    return _mx(x, log2=True, zero_guard=False)


def mx_absmax_scale(x):
    return _mx(x, scale="absmax")


def mx_ceil_scale(x):
    return _mx(x, scale="ceil")


def mx_no_emax(x):
    return _mx(x, scale="no_emax")


def mx_one_scale(x):
    return _mx(x, scale="tensor")


def mx_block_16(x):
    return _mx(x, block=16)


def mx_first_axis(x):
    return _mx(x, axis=0) if x.dim() > 1 and x.shape[0] % 32 == 0 else SOL.mxfp4_quantize(x)


def mx_no_saturation(x):
    return _mx(x, saturate=False)


def mx_ties_away(x):
    return _mx(x, ties="away")


def mx_no_subnormals(x):
    return _mx(x, subnormals=False)


def mx_elements(x):
    return _mx(x, back=False)


def mx_nearest_in_table_ties_up(x):
    # the nearest of the 15 values by argmin: a tie takes the first (the lower magnitude for positive values,
    # the more negative for negative ones): right except at ties
    grid = torch.tensor(sorted(set(formats.all_values("fp4_e2m1"))))
    b = x.reshape(*x.shape[:-1], -1, 32)
    amax = b.abs().amax(-1, keepdim=True)
    s = torch.where(amax > 0, torch.exp2((torch.frexp(amax).exponent - 3).float()), torch.ones_like(amax))
    v = (b / s).clamp(-6, 6)
    q = grid[(v[..., None] - grid).abs().argmin(-1)]
    return (q * s).reshape(x.shape)


MX_MISTAKES = [
    (mx_no_zero_guard, "log2(0) = -inf"),
    (mx_absmax_scale, "not a power of two"),
    (mx_ceil_scale, "(a ceiling)"),
    (mx_no_emax, "Subtract E2M1's largest exponent"),
    (mx_one_scale, "one scale over the whole tensor"),
    (mx_block_16, "NVFP4"),
    (mx_first_axis, "along the first dimension"),
    (mx_no_saturation, "must saturate to ±6"),
    (mx_ties_away, "ties to even"),
    (mx_no_subnormals, "the step stays 0.5"),
    (mx_elements, "multiply them back"),
    (mx_nearest_in_table_ties_up, "ties to even"),
]

MISTAKES = [(name, wrong, named) for name, mistakes in (("encode_e4m3", ENCODE_MISTAKES),
                                                          ("mxfp4_quantize", MX_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch01.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and "Hint: " in out
    assert named in hint_of(out), out


# --- correct variants pass --------------------------------------------------------------------------------------------

def e4_torch_cast(x):
    return x.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)


def e4_course_lib(x):
    return rounding.encode(x, "fp8_e4m3fn")


def e4_int64_codes_in_float32(x):
    # float32 arithmetic, int64 codes: the check compares values
    v = _round(x).float()
    E, M = _fields(v.double())
    return (torch.signbit(v).long() << 7) + (E << 3) + M  # + carries where | would not: right here too


def e4_per_element(x):
    # a scalar loop over every entry, with Python's own round (half to even too)
    out = []
    for t in x.reshape(-1).tolist():
        a = min(abs(t), 448.0)
        e = max(math.frexp(a)[1] - 1, -6) if a else -6
        v = round(a / 2.0 ** (e - 3)) * 2.0 ** (e - 3)
        if v == 0:
            code = 0
        elif v < 2**-6:
            code = int(v * 2**9)
        else:
            ev = math.frexp(v)[1] - 1
            code = (ev + 7) << 3 | int(v / 2.0**ev * 8 - 8)
        out.append(code | (128 if math.copysign(1, t) < 0 else 0))
    return torch.tensor(out, dtype=torch.uint8).reshape(x.shape)


def mx_log2_with_guard(x):
    return _mx(x, log2=True)


def mx_table_ties_to_even(x):
    # the nearest table value, ties to the even code (the one whose mantissa bit is 0)
    grid = torch.tensor(sorted({v for v in formats.all_values("fp4_e2m1") if v >= 0}))
    even = torch.tensor([True, False, True, False, True, False, True, False])  # 0 .5 1 1.5 2 3 4 6
    b = x.reshape(*x.shape[:-1], -1, 32)
    amax = b.abs().amax(-1, keepdim=True)
    s = torch.where(amax > 0, torch.exp2((torch.frexp(amax).exponent - 3).float()), torch.ones_like(amax))
    v = (b / s).abs().clamp(max=6)
    d = (v[..., None] - grid).abs()
    best = d.min(-1, keepdim=True).values
    pick = torch.where((d == best) & (even | ((d == best).sum(-1, keepdim=True) == 1)), 1, 0).argmax(-1)
    return (torch.copysign(grid[pick], b) * s).reshape(x.shape)


def mx_course_lib(x):
    return rounding.mx_fake_quantize(x)


CORRECT = {"encode_e4m3": [SOL.encode_e4m3, e4_torch_cast, e4_course_lib, e4_int64_codes_in_float32, e4_per_element],
           "mxfp4_quantize": [SOL.mxfp4_quantize, mx_log2_with_guard, mx_table_ties_to_even, mx_course_lib]}


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in CORRECT.items() for v in vs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch01.EXERCISES[name], variant, capsys)
    assert ok is True and out == f"[ok] {name}: correct (16 cases).\n", out


# --- the cases cover what they claim ----------------------------------------------------------------------------------

def test_encode_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch01.encode_e4m3_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2} and {tuple(x.shape) for (x,) in cases} >= set(ch01.E4M3_SHAPES)
    assert all(x.dtype == torch.float32 and not bool(torch.isnan(x).any()) for (x,) in cases)
    random = torch.cat([x.reshape(-1) for (x,), label in zip(cases, labels) if label.startswith("seed")])
    a = random.abs()
    assert bool((a < 2**-10).any()) and bool(((a > 2**-10) & (a < 2**-6)).any()) and bool((a > 448).any())
    assert bool((random < 0).any()) and bool((random > 0).any())
    every = torch.cat([x.reshape(-1) for (x,) in cases])
    assert bool(torch.isinf(every).any()) and bool(((every == 0) & torch.signbit(every)).any())
    codes = torch.cat([ch01.reference_encode_e4m3(x).reshape(-1) for (x,) in cases]).long()
    assert set(codes.tolist()) == set(range(256)) - {0x7F, 0xFF}  # every finite code appears; NaN never
    firsts = [x for (x,), label in zip(cases, labels) if re.match(r"seed \d, x of shape \(8,\)", label)]
    assert len(firsts) == 3 and not torch.equal(firsts[0], firsts[1])


def test_mx_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch01.mxfp4_quantize_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2} and {tuple(x.shape) for (x,) in cases} >= set(ch01.MX_SHAPES)
    for (x,) in cases:
        assert x.dtype == torch.float32 and x.shape[-1] % 32 == 0
        amax = x.reshape(-1, 32).abs().amax(-1)
        nonzero = amax[amax > 0]
        # float32 log2 then floor gives the exponent exactly on every case (so a log2 solution is not penalised)
        assert torch.equal(torch.log2(nonzero).floor().long(), torch.frexp(nonzero).exponent.long() - 1)
    blocks = torch.cat([x.reshape(-1, 32) for (x,) in cases])
    amax = blocks.abs().amax(-1)
    assert bool((amax == 0).any())  # an all-zero block
    scaled = blocks / torch.exp2(torch.frexp(amax).exponent - 3).clamp(min=2**-126)[:, None]
    assert bool((scaled.abs() > 6).any())  # saturation happens
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    assert bool(torch.isin(scaled.abs(), ties).any())


@pytest.mark.parametrize("wrong, _", ENCODE_MISTAKES, ids=[w.__name__ for w, _ in ENCODE_MISTAKES])
def test_every_encode_mistake_is_visible_in_some_case(wrong, _):
    cases = ch01.encode_e4m3_cases()[1]
    assert any(not torch.equal(wrong(x).double(), ch01.reference_encode_e4m3(x).double()) for (x,) in cases)


# --- garbage never makes a check raise --------------------------------------------------------------------------------

def _garbage(kind):
    def fn(x):
        return {
            "list": lambda: torch.zeros(x.shape).tolist(),
            "none": lambda: None,
            "numpy": lambda: np.zeros(tuple(x.shape), dtype=np.float32),
            "float": lambda: 0.5,
            "bool tensor": lambda: torch.zeros(x.shape, dtype=torch.bool),
            "complex tensor": lambda: torch.zeros(x.shape, dtype=torch.complex64),
            "nan": lambda: torch.full(x.shape, float("nan")),
            "inf": lambda: torch.full(x.shape, float("inf")),
            "0-d tensor": lambda: torch.tensor(1.0),
            "flat": lambda: torch.zeros(x.numel()),
        }[kind]()
    return fn


GARBAGE = ["list", "none", "numpy", "float", "bool tensor", "complex tensor", "nan", "inf", "0-d tensor", "flat"]


@pytest.mark.parametrize("name", ["encode_e4m3", "mxfp4_quantize"])
@pytest.mark.parametrize("kind", GARBAGE)
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch01.EXERCISES[name], _garbage(kind), capsys)
    assert ok is False and out.startswith(f"[x] {name}: for seed 0,"), out


def test_checks_are_fast(capsys):
    for name in ("encode_e4m3", "mxfp4_quantize"):
        check, solution = ch01.EXERCISES[name], getattr(SOL, name)
        start = time.perf_counter()
        check(solution)
        check(lambda x, solution=solution: solution(x).double() * 1.01)  # a wrong answer runs the diagnosis too
        assert time.perf_counter() - start < 2.0, name
    capsys.readouterr()
