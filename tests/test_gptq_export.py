"""course_lib.gptq.qlinear / export: GPTQ int32 packing, QuantLinear, and a checkpoint transformers reloads."""

import json

import pytest
import torch
from torch import nn

from course_lib.lm import models
from course_lib.gptq import (
    QuantLinear,
    gptq_quantize_model,
    gptq_quantize_weight,
    load_gptq_checkpoint,
    pack_rows,
    pack_zeros_v1,
    save_gptq_checkpoint,
    unpack_rows,
    unpack_zeros_v1,
)
from course_lib.lm.tokens import calibration_batches


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_pack_layout_and_round_trip():
    # 8 four-bit codes down the input dim fill one int32, code r at bits 4r..4r+3
    u = torch.arange(8).reshape(8, 1)
    assert pack_rows(u, 4).item() == 0x76543210
    top = torch.full((8, 1), 15)
    assert pack_rows(top, 4).item() == -1  # 0xFFFFFFFF as int32
    g = torch.Generator().manual_seed(0)
    for bits in (2, 4, 8):
        codes = torch.randint(0, 2**bits, (64, 24), generator=g)
        words = pack_rows(codes, bits)
        assert words.dtype == torch.int32 and words.shape == (64 * bits // 32, 24)
        assert torch.equal(unpack_rows(words, bits), codes)
    with pytest.raises(ValueError, match=r"bits in \(2, 4, 8\)"):
        pack_rows(codes, 3)
    with pytest.raises(ValueError, match="multiple of 8 rows"):
        pack_rows(torch.zeros(12, 2, dtype=torch.long), 4)


def test_v1_zero_points_store_zero_minus_one():
    z = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    assert pack_zeros_v1(z, 4).item() == 0x76543210  # each field holds z - 1
    assert pack_zeros_v1(torch.full((1, 8), 8), 4).item() == 0x77777777  # symmetric int4: z = 8 stored as 7
    g = torch.Generator().manual_seed(1)
    z = torch.randint(0, 16, (5, 32), generator=g)
    z[0, :3] = 0  # a zero point of 0 borrows from the next field: undone exactly on whole words
    stored = pack_zeros_v1(z, 4)
    assert torch.equal(unpack_zeros_v1(stored, 4), z)
    # GPTQModel's v1 -> v2 conversion adds 0x11111111 to every int32 word, then reads fields directly
    v2 = ((stored.to(torch.int64) & 0xFFFFFFFF) + 0x11111111) & 0xFFFFFFFF
    fields = torch.stack([(v2 >> (4 * k)) & 15 for k in range(8)], dim=-1).reshape(5, 32)
    assert torch.equal(fields, z)


@pytest.mark.parametrize("kw", [dict(), dict(act_order=True), dict(act_order=True, static_groups=True),
                                dict(symmetric=False), dict(group_size=None), dict(bits=8), dict(bits=2)])
def test_quantlinear_reproduces_the_gptq_weights_exactly(kw):
    kw = dict(kw)
    bits = kw.pop("bits", 4)
    kw.setdefault("group_size", 32)
    g = torch.Generator().manual_seed(2)
    linear = nn.Linear(64, 48, bias=True)
    X = torch.randn(256, 64, generator=g) * torch.linspace(0.1, 3, 64)
    H = 2 / 256 * X.T @ X
    res = gptq_quantize_weight(linear.weight, H, bits, scale_dtype=torch.float16, **kw)
    q = QuantLinear.from_result(linear, res)
    assert q.qweight.shape == (64 * bits // 32, 48) and q.qzeros.shape == (res.scales.shape[1], 48 * bits // 32)
    assert q.scales.dtype == torch.float16 and q.g_idx.dtype == torch.int32
    assert torch.equal(q.dequantized_weight(), res.qweight_float)
    assert torch.equal(q.g_idx, res.g_idx)
    x = torch.randn(3, 5, 64, generator=g)
    torch.testing.assert_close(q(x), nn.functional.linear(x, res.qweight_float, linear.bias), rtol=0, atol=0)


def test_quantlinear_errors():
    linear = nn.Linear(64, 48)
    res3 = gptq_quantize_weight(linear.weight, torch.eye(64), 3, group_size=32)
    with pytest.raises(ValueError, match=r"bits in \(2, 4, 8\)"):
        QuantLinear.from_result(linear, res3)
    res = gptq_quantize_weight(linear.weight, torch.eye(64), 4, group_size=32)
    with pytest.raises(ValueError, match="pass the GPTQResult of this layer"):
        QuantLinear.from_result(nn.Linear(32, 48), res)
    with pytest.raises(TypeError, match="nn.Linear"):
        QuantLinear.from_result(nn.Conv1d(64, 48, 1), res)


def test_export_errors(tmp_path):
    model = models.tiny_model("llama")
    calib = torch.randint(0, 4096, (4, 32))
    report = gptq_quantize_model(model, calib, 3, group_size=64, progress=False)
    with pytest.raises(ValueError, match="bits=4 to export"):
        save_gptq_checkpoint(model, report, tmp_path / "a")
    with pytest.raises(TypeError, match="GPTQReport"):
        save_gptq_checkpoint(model, None, tmp_path / "b")
    report = gptq_quantize_model(model, calib, 4, group_size=64, progress=False)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1)
    with pytest.raises(ValueError, match="not the GPTQ result in the report"):
        save_gptq_checkpoint(model, report, tmp_path / "c")
    with pytest.raises(ValueError, match="No config.json"):
        load_gptq_checkpoint(tmp_path / "nowhere")


@pytest.mark.slow
def test_tiny_asymmetric_act_order_checkpoint_reloads(tmp_path):
    """Asymmetric, act-order (non-monotonic g_idx), a zero point of 0 (an all-positive group), OPT with biases:
    transformers' GPTQ loading (optimum + GPTQModel, default CPU kernel TorchAtenLinear, which computes in
    bfloat16) computes what the course_lib model computes, to bfloat16 precision (logits about +-1)."""
    model = models.tiny_model("opt")
    with torch.no_grad():
        model.model.decoder.layers[0].self_attn.q_proj.weight[:16, :64].abs_()
    report = gptq_quantize_model(model, torch.randint(0, 4096, (8, 32)), 4, group_size=64, symmetric=False,
                                 act_order=True, static_groups=True, progress=False)
    assert (report.results["model.decoder.layers.0.self_attn.q_proj"].zeros == 0).any()
    out = save_gptq_checkpoint(model, report, tmp_path / "opt-gptq")
    qmodel = load_gptq_checkpoint(out)
    x = torch.randint(0, 4096, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(qmodel(x).logits, model(x).logits, rtol=0, atol=2e-2)


@pytest.mark.slow
def test_bundled_checkpoint_reloads_in_transformers(tmp_path):
    """The exported bundled model reloads with AutoModelForCausalLM.from_pretrained (device_map="cpu";
    optimum + gptqmodel installed) and gives the course_lib model's logits (about +-20) within 0.01 with
    GPTQModel's "torch" backend (float16 weights). About 10 s on one thread (GPTQModel's first forward compiles).
    (Generation works too; it is left out because GPTQModel's CPU layers make it slow, ~1 s per token here.)"""
    model, tok = models.load_model(device="cpu")
    report = gptq_quantize_model(model, calibration_batches(tok, 8, 128), 4, group_size=128, act_order=True,
                                 progress=False)
    out = save_gptq_checkpoint(model, report, tmp_path / "course-gptq", tokenizer=tok)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "gptq" and cfg["bits"] == 4 and cfg["group_size"] == 128
    assert cfg["desc_act"] is True and cfg["sym"] is True and cfg["checkpoint_format"] == "gptq"
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.layers.0.mlp.down_proj.qweight").shape == (768 // 8, 256)
    assert "model.layers.0.mlp.down_proj.weight" not in keys
    assert {"model.layers.7.self_attn.k_proj." + s for s in ("qweight", "qzeros", "scales", "g_idx")} <= keys

    ids = torch.tensor(tok("The quick brown fox")["input_ids"])[None]
    with torch.no_grad():
        ref = model(ids).logits
        q_torch = load_gptq_checkpoint(out, backend="torch")
        torch.testing.assert_close(q_torch(ids).logits, ref, rtol=0, atol=1e-2)
