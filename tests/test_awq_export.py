"""course_lib.awq.export: AWQ GEMM packing (checked against GPTQModel's packer) and a transformers reload."""

from __future__ import annotations

import json

import pytest
import torch

from course_lib.lm import models
from course_lib.awq import awq_quantize_model
from course_lib.awq.export import (AWQ_ORDER, awq_tensors, load_awq_checkpoint, pack_awq, save_awq_checkpoint,
                                   unpack_awq)
from course_lib.quant import quantize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pack_awq_round_trips_and_interleaves_outputs():
    codes = torch.randint(0, 16, (6, 32), generator=torch.Generator().manual_seed(0))
    words = pack_awq(codes)
    assert words.dtype == torch.int32 and words.shape == (6, 4)
    assert torch.equal(unpack_awq(words), codes)
    one = torch.zeros(1, 8, dtype=torch.int64)
    one[0, 1] = 0xF                                       # output 1 sits in nibble 4 (order 0 2 4 6 1 3 5 7)
    assert pack_awq(one).item() == 0xF << (4 * AWQ_ORDER.index(1))
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_awq(torch.zeros(2, 12, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_awq(torch.full((1, 8), 16))


def test_pack_awq_matches_gptqmodel():
    packing = pytest.importorskip("gptqmodel.quantization.awq.utils.packing_utils")
    gen = torch.Generator().manual_seed(1)
    codes, zeros = torch.randint(0, 16, (64, 48), generator=gen), torch.randint(0, 16, (2, 48), generator=gen)
    ref_w, ref_z = packing.pack_awq(codes, zeros, 4)
    assert torch.equal(pack_awq(codes), ref_w) and torch.equal(pack_awq(zeros), ref_z)


def test_awq_tensors_dequantize_to_the_qtensor():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    for symmetric in (False, True):
        qt = quantize(w, 4, symmetric=symmetric, granularity="group", group_size=32)
        t = awq_tensors(qt)
        assert t["qweight"].shape == (64, 2) and t["qzeros"].shape == (2, 2) and t["scales"].shape == (2, 16)
        codes, zeros = unpack_awq(t["qweight"]).float(), unpack_awq(t["qzeros"]).float()   # (K, N), (G, N)
        g = torch.arange(64) // 32
        w_hat = (t["scales"].float()[g] * (codes - zeros[g])).T
        ref = qt.scale.half().float() * (qt.q.float().reshape(16, 2, 32) - qt.zero)
        torch.testing.assert_close(w_hat, ref.reshape(16, 64), rtol=0, atol=0)
    with pytest.raises(ValueError, match="4-bit"):
        awq_tensors(quantize(w, 3, symmetric=False, granularity="group", group_size=32))


def test_checkpoint_reloads_in_transformers_with_the_same_logits(tmp_path):
    pytest.importorskip("gptqmodel")
    model = models.tiny_model("llama")
    calib = torch.randint(0, 4096, (4, 32), generator=torch.Generator().manual_seed(0))
    report = awq_quantize_model(model, calib, 4, group_size=64, n_grid=4, progress=False)
    out = save_awq_checkpoint(model, report, tmp_path / "tiny-awq")
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "awq" and cfg["version"] == "gemm" and cfg["group_size"] == 64
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.layers.0.mlp.down_proj.qweight").shape == (256, 128 // 8)
    assert "model.layers.0.mlp.down_proj.weight" not in keys and "lm_head.weight" in keys
    qmodel = load_awq_checkpoint(out, dtype=torch.float32)
    x = calib[:2]
    with torch.no_grad():
        ref, got = model(x).logits, qmodel(x).logits.float()
    # GPTQModel's CPU AWQ kernel dequantizes to bfloat16: agreement to bf16 accuracy, not exactly
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_export_errors(tmp_path):
    model = models.tiny_model("llama")
    calib = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="AWQReport"):
        save_awq_checkpoint(model, object(), tmp_path / "a")
    report3 = awq_quantize_model(model, calib, 3, group_size=64, n_grid=2, clip=False, progress=False)
    with pytest.raises(ValueError, match="4-bit weights"):
        save_awq_checkpoint(model, report3, tmp_path / "a")
    model = models.tiny_model("llama")
    report = awq_quantize_model(model, calib, 4, group_size=64, n_grid=2, clip=False, progress=False)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1.0)
    with pytest.raises(ValueError, match="changed after quantization"):
        save_awq_checkpoint(model, report, tmp_path / "b")
    with pytest.raises(ValueError, match="No config.json"):
        load_awq_checkpoint(tmp_path / "nothing")


def test_awq_and_gptq_exports_of_one_model_differ_only_by_g_idx(tmp_path):
    """The same quantized model written in both formats: the same float tensors in the same 16-bit dtype,
    qweight/qzeros/scales of the same bytes encoding the same weights; GPTQ's g_idx is the whole difference."""
    import copy

    from safetensors import safe_open

    from course_lib.awq.export import as_gptq_report, bytes_by_part
    from course_lib.gptq import save_gptq_checkpoint
    from course_lib.gptq.qlinear import unpack_rows, unpack_zeros_v1

    model = models.tiny_model("llama")
    calib = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    report = awq_quantize_model(model, calib, 4, group_size=64, n_grid=2, clip=False, progress=False)
    awq_dir = save_awq_checkpoint(model, report, tmp_path / "awq")                    # bfloat16 float tensors
    gptq_dir = save_gptq_checkpoint(copy.deepcopy(model).to(torch.bfloat16), as_gptq_report(report),
                                    tmp_path / "gptq")                                 # chapter 03's way
    assert json.loads((awq_dir / "config.json").read_text())["dtype"] == "bfloat16"

    with safe_open(str(awq_dir / "model.safetensors"), "pt") as fa, \
            safe_open(str(gptq_dir / "model.safetensors"), "pt") as fg:
        a, g = {k: fa.get_tensor(k) for k in fa.keys()}, {k: fg.get_tensor(k) for k in fg.keys()}
    float_keys = {k for k in a if k.rsplit(".", 1)[-1] not in ("qweight", "qzeros", "scales")}
    assert float_keys == {k for k in g if k.rsplit(".", 1)[-1] not in ("qweight", "qzeros", "scales", "g_idx")}
    assert "model.embed_tokens.weight" in float_keys and "lm_head.weight" in float_keys
    for k in float_keys:
        assert a[k].dtype == g[k].dtype == torch.bfloat16, k
        assert torch.equal(a[k], g[k]), k
    assert set(g) - set(a) == {f"{n}.g_idx" for n in report.codes}
    for name in report.codes:
        for part in ("qweight", "qzeros", "scales"):
            ta, tg = a[f"{name}.{part}"], g[f"{name}.{part}"]
            assert ta.numel() * ta.element_size() == tg.numel() * tg.element_size(), (name, part)
        assert torch.equal(a[f"{name}.scales"], g[f"{name}.scales"])                   # both (G, N) float16
        assert torch.equal(unpack_awq(a[f"{name}.qweight"]), unpack_rows(g[f"{name}.qweight"], 4))   # (K, N) codes
        assert torch.equal(unpack_awq(a[f"{name}.qzeros"]), unpack_zeros_v1(g[f"{name}.qzeros"], 4))

    pa, pg = bytes_by_part(awq_dir), bytes_by_part(gptq_dir)
    assert sum(pa.values()) == (awq_dir / "model.safetensors").stat().st_size
    assert pa["g_idx"] == 0 and pg["g_idx"] == sum(4 * qt.shape[1] for qt in report.codes.values())
    assert all(pa[p] == pg[p] for p in ("float tensors", "qweight", "qzeros", "scales"))
    assert sum(pg.values()) - sum(pa.values()) == pg["g_idx"] + pg["header"] - pa["header"]


def test_export_dtype_and_part_errors(tmp_path):
    from course_lib.awq.export import as_gptq_report, bytes_by_part

    model = models.tiny_model("llama")
    calib = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    report = awq_quantize_model(model, calib, 4, group_size=64, n_grid=2, clip=False, progress=False)
    with pytest.raises(ValueError, match="dtype must be one of"):
        save_awq_checkpoint(model, report, tmp_path / "a", dtype=torch.int8)
    f32 = bytes_by_part(save_awq_checkpoint(model, report, tmp_path / "f32", dtype=torch.float32))
    bf16 = bytes_by_part(save_awq_checkpoint(model, report, tmp_path / "bf16"))
    assert f32["float tensors"] == 2 * bf16["float tensors"] and f32["qweight"] == bf16["qweight"]
    with pytest.raises(TypeError, match="AWQReport"):
        as_gptq_report(object())
    with pytest.raises(ValueError, match="No \\*.safetensors"):
        bytes_by_part(tmp_path / "nothing")
