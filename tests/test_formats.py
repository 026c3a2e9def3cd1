"""course_lib.formats: the decoder and every measured property agree with torch, bitsandbytes and the definitions."""

import math
import random
import sys
import warnings

import pytest
import torch

from course_lib import formats
from course_lib.formats import FloatFormat, decode, get_format, stats
from course_lib.formats.demos import bits_per_param, bnb_nf4_storage, nf4_bits_per_param, running_sum
from course_lib.formats.widget import bits_of, explain_bits

TORCH_FLOATS = [name for name, f in formats.FORMATS.items() if isinstance(f, FloatFormat) and f.torch_name]
FP8 = ["fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz"]


def torch_spacing_above_one(dtype) -> float:
    """The gap between 1.0 and the next value, as torch itself decodes the code after 1.0's."""
    bits = torch.finfo(dtype).bits
    one = torch.ones(1, dtype=dtype).view({8: torch.uint8, 16: torch.int16, 32: torch.int32, 64: torch.int64}[bits])
    return (one + 1).view(dtype).double().item() - 1.0


@pytest.mark.parametrize("name", TORCH_FLOATS)
def test_range_and_epsilon_match_torch_finfo(name):
    s, dtype = stats(name), get_format(name).torch_dtype()
    info = torch.finfo(dtype)
    assert s.bits == info.bits
    assert s.max == info.max
    assert s.min_normal == info.smallest_normal == info.tiny
    # torch.finfo has no smallest subnormal: compare with torch's reading of the code 0...01
    assert s.min_subnormal == formats.torch_decode([1], dtype)[0] > 0
    assert s.eps == torch_spacing_above_one(dtype)
    if name != "fp8_e5m2fnuz":  # torch 2.13's finfo says 0.125 there, but its own code after 1.0 is 1.25
        assert s.eps == info.eps


@pytest.mark.parametrize("name", ["fp64", "fp32", "fp16", "bf16"])
def test_smallest_subnormal_is_nextafter_zero(name):
    dtype = get_format(name).torch_dtype()
    zero = torch.zeros((), dtype=dtype)
    assert stats(name).min_subnormal == torch.nextafter(zero, torch.ones((), dtype=dtype)).item()


@pytest.mark.parametrize("name", FP8)
def test_all_256_fp8_codes_decode_like_torch(name):
    ours = formats.all_values(name)
    theirs = torch.arange(256, dtype=torch.uint8).view(get_format(name).torch_dtype()).float().tolist()
    assert [math.isnan(v) for v in ours] == [math.isnan(v) for v in theirs]
    assert all(formats.same_value(a, b) for a, b in zip(ours, theirs))
    assert formats.mismatches_vs_torch(name) == []


def test_fp8_special_values():
    e4m3 = formats.all_values("fp8_e4m3fn")
    assert [c for c, v in enumerate(e4m3) if math.isnan(v)] == [0x7F, 0xFF]
    assert not any(math.isinf(v) for v in e4m3) and e4m3[0x7E] == 448.0
    fnuz = formats.all_values("fp8_e4m3fnuz")
    assert [c for c, v in enumerate(fnuz) if math.isnan(v)] == [0x80]
    assert max(v for v in fnuz if not math.isnan(v)) == 240.0
    e5m2 = formats.all_values("fp8_e5m2")
    assert e5m2[0x7C] == math.inf and e5m2[0xFC] == -math.inf and sum(map(math.isnan, e5m2)) == 6


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_every_16_bit_code_decodes_like_torch(name):
    assert formats.mismatches_vs_torch(name) == []


@pytest.mark.parametrize("name", ["fp32", "fp64"])
def test_random_wide_codes_decode_like_torch(name):
    rng = random.Random(0)
    bits = get_format(name).bits
    codes = [rng.getrandbits(bits) for _ in range(5000)] + [0, 1, (1 << bits) - 1, 1 << (bits - 1)]
    assert formats.mismatches_vs_torch(name, codes) == []


def test_e2m1_values():
    values = formats.all_values("fp4_e2m1")
    assert sorted(set(values)) == [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert values[:8] == [0, 0.5, 1, 1.5, 2, 3, 4, 6] and values[8:] == [-v for v in values[:8]]
    s = stats("fp4_e2m1")
    assert (s.max, s.min_normal, s.min_subnormal, s.eps, s.has_inf, s.has_nan) == (6, 1, 0.5, 0.5, False, False)


def test_e2m1_matches_torchao_reference_decoder():
    with warnings.catch_warnings():  # torchao's import warns about torch.jit deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        kernels = pytest.importorskip("torchao.prototype.mx_formats.kernels")
    theirs = kernels.f4_unpacked_to_f32(torch.arange(16, dtype=torch.uint8)).tolist()
    assert all(formats.same_value(a, b) for a, b in zip(formats.all_values("fp4_e2m1"), theirs))


def test_integers_are_twos_complement():
    assert formats.all_values("int4") == [0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1]
    int8 = formats.all_values("int8")
    assert int8 == torch.arange(256, dtype=torch.uint8).view(torch.int8).double().tolist()
    assert (stats("int8").max, min(int8)) == (127, -128)


def test_nf4_from_its_definition():
    values = formats.nf4_code_book()
    assert len(values) == 16 and values[0] == -1.0 and values[-1] == 1.0 and values[7] == 0.0
    assert sum(v > 0 for v in values) == 8 and sum(v < 0 for v in values) == 7
    assert values == tuple(sorted(values))
    with pytest.raises(ValueError, match="offset"):
        formats.nf4_code_book(offset=1.0)


def test_nf4_matches_bitsandbytes():
    pytest.importorskip("bitsandbytes")
    theirs = formats.bnb_code_book("nf4")
    assert max(abs(a - b) for a, b in zip(formats.nf4_code_book(), theirs)) < 1e-6


def test_bitsandbytes_fp4_differs_from_e2m1_only_in_its_subnormal():
    pytest.importorskip("bitsandbytes")
    theirs = formats.bnb_code_book("fp4")
    e2m1 = {abs(v) / 6 for v in formats.all_values("fp4_e2m1")}
    bnb = {round(abs(v), 6) for v in theirs}
    assert {round(v, 6) for v in e2m1} - bnb == {round(1 / 12, 6)}
    assert bnb - {round(v, 6) for v in e2m1} == {round(1 / 192, 6)}


def test_spacing_matches_nextafter():
    for name in ["fp16", "bf16", "fp32"]:
        dtype = get_format(name).torch_dtype()
        for x in [1e-7, 1e-3, 0.25, 1.0, 1000.0, 3e4]:
            t = torch.tensor(x, dtype=dtype)
            assert formats.spacing(t.item(), name) == (torch.nextafter(t, t * 2) - t).item()


def test_explain_bits_on_known_patterns():
    one_and_half = explain_bits([0, 0, 1, 1, 1, 1, 0, 0], "fp8_e4m3fn")
    assert one_and_half.value == 1.5 and one_and_half.kind == "normal" and one_and_half.code == 0x3C
    assert one_and_half.fields == {"sign": "0", "exponent": "0111", "mantissa": "100"}
    assert "2^(7-7)" in one_and_half.text and one_and_half.text.endswith("= 1.5")
    assert explain_bits(bits_of(0x7E, "e4m3"), "e4m3").value == 448
    assert explain_bits(bits_of(0x7F, "e4m3"), "e4m3").kind == "nan"
    assert explain_bits(bits_of(0x01, "e4m3"), "e4m3").kind == "subnormal"
    assert explain_bits(bits_of(0x80, "fp8_e4m3fnuz"), "fp8_e4m3fnuz").kind == "nan"
    assert explain_bits(bits_of(0x7C00, "fp16"), "fp16").value == math.inf
    assert explain_bits(bits_of(0x3F80, "bf16"), "bf16").value == 1.0
    int8 = explain_bits([1, 1, 1, 1, 1, 1, 0, 1], "int8")
    assert int8.value == -3 and "-128" in int8.text
    nf4 = explain_bits([1, 1, 1, 1], "nf4")
    assert nf4.value == 1.0 and nf4.kind == "table"
    assert explain_bits([True, False, False, False], "int4").value == -8


def test_explain_bits_rejects_bad_input():
    with pytest.raises(ValueError, match="has 8 bits; got 7"):
        explain_bits([0] * 7, "fp8_e4m3fn")
    with pytest.raises(ValueError, match="0 or 1"):
        explain_bits([0, 2, 0, 0], "int4")
    with pytest.raises(ValueError, match="Unknown format 'fp7'.*fp16"):
        explain_bits([0] * 7, "fp7")


def test_decode_rejects_bad_input():
    with pytest.raises(ValueError, match="Unknown format"):
        decode(0, "float12")
    with pytest.raises(ValueError, match="0..255"):
        decode(256, "fp8_e5m2")
    with pytest.raises(TypeError, match="non-negative int"):
        decode(1.5, "fp16")
    with pytest.raises(TypeError, match="name like 'fp16'"):
        get_format(16)
    with pytest.raises(ValueError, match="at most 16 bits"):
        formats.all_values("fp32")


def test_aliases_and_ieee_style_e4m3():
    assert get_format("E4M3") is get_format("fp8_e4m3fn") and get_format("bfloat16").name == "bf16"
    # An E4M3 that kept IEEE's reserved top exponent would also top out at 240, like fnuz (for another reason).
    assert stats(FloatFormat("e4m3_ieee", 4, 3, 7, "ieee")).max == 240


def test_accumulation_stalls_where_the_spacing_exceeds_twice_the_addend():
    fp16 = running_sum(1e-4, 4000, torch.float16)
    assert fp16.stall_value == 0.25 and formats.spacing(0.25, "fp16") / 2 > 1e-4
    bf16 = running_sum(1e-4, 1000, torch.bfloat16)
    assert bf16.stall_value == 2**-5
    assert running_sum(1e-4, 1000, torch.float32).stalled_at is None


def test_memory_helpers():
    assert nf4_bits_per_param(double_quant=False) == 4.5
    assert math.isclose(nf4_bits_per_param(), 4 + 8 / 64 + 32 / (64 * 256))
    assert bits_per_param(4, 128, 16) == 4.125 and bits_per_param(16) == 16
    with pytest.raises(ValueError, match="group_size"):
        bits_per_param(4, 0)


def test_bnb_nf4_storage_counts_every_part():
    pytest.importorskip("bitsandbytes")
    w = torch.randn(128, 512, generator=torch.Generator().manual_seed(0))
    storage = bnb_nf4_storage([w])
    assert storage["codes"] == 4 and storage["absmax"] == 8 / 64
    assert storage["per-tensor tables"] == (16 + 256) * 4 * 8 / w.numel()
    assert math.isclose(storage["total"], sum(v for k, v in storage.items() if k != "total"))
    plain = bnb_nf4_storage([w], double_quant=False)
    assert plain["absmax"] == 32 / 64 and plain["second-level scales"] == 0


def test_bit_explorer_widget_follows_its_toggles():
    pytest.importorskip("ipywidgets")
    from course_lib.formats.widget import bit_explorer

    panel = bit_explorer("fp8_e4m3fn", code=0x38)
    dropdown, toggles, _, out = panel.children
    assert "value 1<" in out.value
    toggles.children[1].value = True  # set the exponent's top bit: 0x78 = 2^8
    assert "value 256<" in out.value
    dropdown.value = "int4"
    assert len(toggles.children) == 4
    toggles.children[0].value = True
    assert "value -8<" in out.value


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(ModuleNotFoundError, match="pip install bitsandbytes"):
        formats.bnb_code_book("nf4")


def test_has_bitsandbytes_follows_the_import(monkeypatch):
    import importlib.util

    assert formats.has_bitsandbytes() == (importlib.util.find_spec("bitsandbytes") is not None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert formats.has_bitsandbytes() is False
