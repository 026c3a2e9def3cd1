"""course_lib.bnb: LLM.int8(), NF4/FP4, double quantization and Linear4bit, checked by hand and against bitsandbytes."""

import pytest
import torch

from course_lib.bnb import int8, library, linear4bit, nf4
from course_lib.core.optional import have

needs_bnb = pytest.mark.skipif(not have("bitsandbytes"), reason="bitsandbytes is not installed")


# ---------------------------------------------------------------- LLM.int8()

def test_vectorwise_quant_by_hand():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    q, absmax = int8.vectorwise_quant(x)
    assert absmax.tolist() == [2.0, 0.0]
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]]  # round(1 * 127 / 2) = 64 (63.5 rounds to even: 64)
    assert torch.allclose(int8.vectorwise_dequant(q, absmax)[0], torch.tensor([64, -127, 32]) * 2 / 127)


def test_int8_matmul_is_exact_integer_arithmetic():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (5, 300), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (7, 300), generator=g, dtype=torch.int8)
    assert torch.equal(int8.int8_matmul(a, b), (a.long() @ b.long().t()).int())
    with pytest.raises(TypeError):
        int8.int8_matmul(a.float(), b)


def test_decomposition_finds_outlier_columns_and_removes_their_error():
    torch.manual_seed(0)
    x, w = torch.randn(16, 128), torch.randn(32, 128) * 0.05
    x[:, [3, 90]] *= 40
    x[2, 10] = 6.0  # exactly at the threshold: >= counts
    exact = x @ w.t()
    mixed = int8.llm_int8_linear(x, w, threshold=6.0, outlier_weight=w)
    plain = int8.llm_int8_linear(x, w, threshold=0.0)
    assert mixed.outlier_cols.tolist() == [3, 10, 90]
    assert plain.outlier_cols.numel() == 0
    err = lambda y: ((y - exact).norm() / exact.norm()).item()  # noqa: E731
    assert err(mixed.out) < 0.3 * err(plain.out)
    # with a threshold above every value the decomposition does nothing
    assert torch.equal(int8.llm_int8_linear(x, w, threshold=1e6).out, plain.out)


def test_llm_int8_linear_shapes_and_errors():
    w = torch.randn(8, 16)
    out = int8.llm_int8_linear(torch.randn(2, 3, 16), w, torch.zeros(8))
    assert out.out.shape == (2, 3, 8)
    with pytest.raises(ValueError, match="input features"):
        int8.llm_int8_linear(torch.randn(2, 15), w)
    with pytest.raises(ValueError, match="outlier_weight"):
        int8.llm_int8_linear(torch.full((2, 16), 9.0), w, outlier_weight="fp8")


def test_per_token_error_is_relative_to_the_ordinary_part():
    torch.manual_seed(1)
    x, w = torch.randn(8, 64), torch.randn(16, 64) * 0.1
    x[0, 5] = 500.0  # one massive activation wipes out token 0's ordinary values in plain int8
    e = int8.per_token_error(x, w)
    assert e["has_outlier"].tolist() == [True] + [False] * 7
    assert e["int8"][0] > 0.5 and e["decomposed"][0] < 0.05


@needs_bnb
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_int8_matches_bitsandbytes_linear8bitlt(seed):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(256, 64).half()
    x = torch.randn(2, 10, 256)
    x[:, :, torch.randperm(256)[:3]] *= 20
    x[0, 0, 7] = 6.0
    row = library.compare_int8(lin, x, threshold=6.0)
    assert row["same outlier columns"] and row["same int8 weight"]
    assert row["max difference, in float16 steps"] <= 1, row


# ---------------------------------------------------------------- NF4 / FP4

def test_codes():
    nf = nf4.code_values("nf4")
    assert nf.numel() == 16 and nf[0] == -1 and nf[-1] == 1 and (nf == 0).sum() == 1
    assert (nf[1:] > nf[:-1]).all() and (nf > 0).sum() == 8 and (nf < 0).sum() == 7
    fp = nf4.code_values("fp4")
    assert fp.abs().max() == 1 and torch.equal(fp[8:], -fp[:8]) and fp[1] == 0.0625 / 12
    dyn = nf4.dynamic_code()
    # 256 distinct sorted values: 0, 1, and 127 of each sign (decimal exponents 1e-6 .. 1e0, linear fractions)
    assert dyn.numel() == 256 and dyn.unique().numel() == 256 and (dyn[1:] > dyn[:-1]).all()
    assert dyn.max() == 1.0 and -1 < dyn.min() < -0.99 and (dyn == 0).sum() == 1 and (dyn > 0).sum() == 128
    with pytest.raises(ValueError, match="nf4"):
        nf4.code_values("int3")


def test_pack_unpack_roundtrip_and_nibble_order():
    idx = torch.tensor([1, 2, 15, 0, 7], dtype=torch.uint8)
    packed = nf4.pack_nibbles(idx, fill=7)
    assert packed.tolist() == [0x12, 0xF0, 0x77]  # first code in the high nibble; odd count padded with 7
    assert torch.equal(nf4.unpack_nibbles(packed, 5), idx)


@pytest.mark.parametrize("shape", [(64,), (4, 64), (100, 37), (7,)])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double", [False, True])
def test_quantize_4bit_roundtrip(shape, quant_type, double):
    torch.manual_seed(0)
    w = torch.randn(shape) * 0.02
    q = nf4.quantize_4bit(w, quant_type, 64, double_quant=double)
    back = nf4.dequantize_4bit(q)
    assert back.shape == w.shape and q.packed.numel() == (w.numel() + 1) // 2
    # each value lands on its block's grid: at most half the largest gap between code values times the absmax
    code = nf4.code_values(quant_type).sort().values
    half_gap = (code[1:] - code[:-1]).max() / 2
    absmax = w.reshape(-1).abs().max()
    assert (back - w).abs().max() <= half_gap * absmax * (1.02 if double else 1.0) + 1e-7


def test_zero_block_stays_zero():
    w = torch.zeros(128)
    w[64:] = torch.randn(64)
    back = nf4.dequantize_4bit(nf4.quantize_4bit(w, double_quant=False))
    assert torch.equal(back[:64], torch.zeros(64)) and not back.isnan().any()


def test_bits_per_param_formula_and_storage():
    assert nf4.bits_per_param(64, False) == 4.5
    assert nf4.bits_per_param(64, True) == pytest.approx(4.127, abs=5e-4)
    w = torch.randn(64 * 256 * 4)
    assert nf4.quantize_4bit(w, double_quant=False).bits_per_param() == 4.5
    assert nf4.quantize_4bit(w, double_quant=True).bits_per_param() == pytest.approx(4 + 8 / 64 + 32 / 64 / 256 * 1 +
                                                                                     32 / w.numel(), rel=1e-9)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="blocksize must be one of"):
        nf4.quantize_4bit(torch.randn(128), blocksize=48)
    with pytest.raises(ValueError, match="blocksize must be one of"):
        nf4.quantize_4bit(torch.randn(128), blocksize2=100)
    with pytest.raises(ValueError, match="non-empty float"):
        nf4.quantize_4bit(torch.arange(64))
    with pytest.raises(ValueError, match="16 values"):
        nf4.quantize_4bit(torch.randn(64), code=torch.linspace(-1, 1, 8))


@needs_bnb
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double", [False, True])
def test_4bit_matches_bitsandbytes(dtype, quant_type, double):
    torch.manual_seed(3)
    w = (torch.randn(96, 160) * 0.02).to(dtype)
    row = library.compare_4bit(w, quant_type, 64, double)
    assert row["codes equal (bnb table)"] == 1.0 and row["dequantized equal"]
    assert row["codes equal"] > 0.9999  # the course's own NF4 table differs from bitsandbytes' in the last bit
    if double:
        assert row["course nearer"] and row["absmax codes equal"] > 0.99


@needs_bnb
def test_course_nf4_table_equals_bitsandbytes_to_float_precision():
    import bitsandbytes.functional as F

    assert (nf4.code_values("nf4") - F.get_4bit_type("nf4", device="cpu")).abs().max() < 1e-6
    assert torch.equal(nf4.code_values("fp4"), F.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(nf4.dynamic_code(), F.create_dynamic_map())


# ---------------------------------------------------------------- Linear4bit

def test_linear4bit_forward_equals_dequantized_matmul():
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 32)
    q = linear4bit.Linear4bit.from_linear(lin)
    x = torch.randn(5, 128)
    w_hat = nf4.dequantize_4bit(nf4.quantize_4bit(lin.weight.detach()))
    assert torch.allclose(q(x), x @ w_hat.t() + lin.bias, atol=1e-6)
    assert 8 * q.storage_bytes() / (128 * 32) < 4.2
    assert not any(p.requires_grad for p in q.parameters())
    assert "double-quantized" in repr(q)


def test_quantize_model_4bit_replaces_linears_but_not_lm_head():
    from course_lib.lm.models import tiny_model

    model = tiny_model("llama", vocab_size=256)
    names = linear4bit.quantize_model_4bit(model)
    assert names and all("lm_head" not in n for n in names)
    assert isinstance(model.model.layers[0].self_attn.q_proj, linear4bit.Linear4bit)
    assert isinstance(model.lm_head, torch.nn.Linear)
    out = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert out.shape[-1] == 256 and not out.isnan().any()
    with pytest.raises(ValueError, match="no nn.Linear"):
        linear4bit.quantize_model_4bit(torch.nn.Sequential(torch.nn.ReLU()))


# ---------------------------------------------------------------- the library wrappers

def test_bnb_config_states_every_choice():
    pytest.importorskip("transformers")
    if not have("bitsandbytes"):
        pytest.skip("bitsandbytes is not installed")
    cfg = library.bnb_config("nf4", compute_dtype=torch.float32)
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_compute_dtype == torch.float32
    assert library.bnb_config("int8", threshold=4.0).llm_int8_threshold == 4.0
    defaults = library.transformers_4bit_defaults()
    assert defaults["quant type"] == "fp4" and defaults["double quantization"] is False
    with pytest.raises(ValueError, match="kind must be one of"):
        library.bnb_config("int4")


def test_missing_bitsandbytes_gives_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "bitsandbytes" or name.startswith("bitsandbytes."):
            raise ImportError("no bitsandbytes")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ModuleNotFoundError, match="pip install bitsandbytes"):
        library.import_bnb()


@needs_bnb
def test_unsupported_device_is_a_clear_error():
    with pytest.raises(RuntimeError, match="does not run on 'meta'"):
        library.check_device("meta")


@needs_bnb
@pytest.mark.slow
def test_load_quantized_bundled_model_and_storage_bits():
    from course_lib.bnb import teach

    model = library.load_quantized(None, "nf4", double_quant=True, compute_dtype=torch.float32)
    bits = teach.bits_from_storage(model)
    assert bits["parameters"] > 0 and abs(bits["bits per parameter"] - nf4.bits_per_param(64, True)) < 0.01
    out = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert not out.isnan().any()
