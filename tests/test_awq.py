"""course_lib.awq: scales, folding, the search, and the whole-model pass on tiny models."""

from __future__ import annotations

import pytest
import torch

from course_lib.lm import models
from course_lib.awq import (AWQ_ARCHITECTURES, apply_clip, architecture_groups, awq_quantize_model, awq_scales,
                            fold_scales, scale_groups, search_clip, search_scales)
from course_lib.lm.blocks import find_blocks
from course_lib.quant import fake_quantize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _calib(n=4, seq=32, seed=0):
    return torch.randint(0, 4096, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_scales_straddle_one_and_ratio_zero_is_no_scaling():
    x_mean = torch.rand(64, generator=torch.Generator().manual_seed(0)) * 10
    for r in (0.0, 0.25, 0.5, 0.95):
        s = awq_scales(x_mean, r)
        assert s.max() * s.min() == pytest.approx(1.0, rel=1e-5)
        w_mean = torch.rand(64, generator=torch.Generator().manual_seed(1)) + 0.1
        duo = awq_scales(x_mean, r, w_mean)
        assert duo.max() * duo.min() == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(awq_scales(x_mean, 0.0), torch.ones(64))
    # larger mean|x| -> larger scale, for r > 0
    s = awq_scales(x_mean, 0.5)
    assert torch.equal(torch.argsort(s), torch.argsort(x_mean.clamp(min=1e-4)))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        awq_scales(x_mean, 1.0)


def test_search_at_ratio_zero_is_exactly_rtn():
    """The first ratio tried is r = 0 (s = 1): its loss is plain round-to-nearest's, computed independently."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32, bias=False)
    salient = torch.ones(64)
    salient[[3, 17, 40, 55]] = 20.0                  # four input channels carry much larger activations
    x = torch.randn(200, 64) * salient
    out_fp = layer(x)
    search = search_scales([layer], x, lambda: layer(x), out_fp, 3, group_size=32)
    rtn = fake_quantize(layer.weight, 3, symmetric=False, granularity="group", group_size=32)
    assert search.losses[0] == pytest.approx((x @ rtn.T - out_fp).pow(2).mean().item(), rel=1e-6)
    assert search.ratios == [i / 20 for i in range(20)]
    assert search.best_loss < 0.5 * search.loss_rtn and search.best_ratio > 0  # salient channels: AWQ helps
    assert torch.equal(layer(x), out_fp)  # weights restored


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_folding_scales_leaves_the_float_model_unchanged(arch):
    model = models.tiny_model(arch)
    ids = _calib()
    with torch.no_grad():
        before = model(ids).logits
        _, blocks, _ = find_blocks(model)
        gen = torch.Generator().manual_seed(1)
        for block in blocks:
            for g in scale_groups(model, block):
                layers = [block.get_submodule(n) for n in g.layers]
                s = awq_scales(torch.rand(layers[0].in_features, generator=gen) * 4, 0.5)
                fold_scales(block.get_submodule(g.prev), layers, s)
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_v_to_o_is_skipped_under_grouped_query_attention():
    llama, opt = models.tiny_model("llama"), models.tiny_model("opt")  # llama: 2 kv heads for 4 query heads
    prevs = {arch: [g.prev for g in scale_groups(m, find_blocks(m)[1][0])]
             for arch, m in (("llama", llama), ("opt", opt))}
    assert "self_attn.v_proj" not in prevs["llama"] and len(prevs["llama"]) == 3
    assert "self_attn.v_proj" in prevs["opt"] and len(prevs["opt"]) == 4


def test_unknown_architecture_names_the_mapping_to_provide():
    gpt2 = models.tiny_model("gpt2")
    with pytest.raises(ValueError, match=r"no scale groups known for architecture 'gpt2'.*AWQ_ARCHITECTURES\['gpt2'\]"):
        awq_quantize_model(gpt2, _calib(), 4, group_size=64, progress=False)
    assert set(AWQ_ARCHITECTURES) >= {"llama", "qwen2", "mistral", "opt"}
    assert architecture_groups(models.tiny_model("qwen2"))[0].prev == "input_layernorm"


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_whole_model_awq_quantizes_every_block_linear_and_beats_rtn_per_group(arch):
    model = models.tiny_model(arch)
    path, blocks, _ = find_blocks(model)
    report = awq_quantize_model(model, _calib(), 4, group_size=64, n_grid=5, progress=False)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in blocks[0].modules())
    assert len(report.quantized) == len(blocks) * n_linear
    assert len(report.groups) == len(blocks) * len(scale_groups(model, blocks[0]))
    for row in report.groups:
        assert row["loss_awq"] <= row["loss_rtn"] and 0 <= row["ratio"] < 1
    # every quantized weight holds at most 2^4 distinct values per group of 64
    w = model.get_submodule(report.quantized[0]).weight.detach()
    assert max(len(torch.unique(g)) for g in w.reshape(-1, 64)) <= 16
    with pytest.raises(ValueError, match="group_size 48 does not divide"):
        awq_quantize_model(models.tiny_model(arch), _calib(), 4, group_size=48, progress=False)


def test_clip_search_never_hurts_and_clips_an_outlier_weight():
    torch.manual_seed(0)
    W = torch.randn(16, 64)
    W[0, 5] = 12.0                                    # one outlier weight in row 0, group 0
    x = torch.randn(300, 64)
    assert torch.equal(search_clip(W, x, 3, group_size=32, max_shrink=0.0), W.abs().reshape(16, 2, 32).amax(-1))
    max_val = search_clip(W, x, 3, group_size=32)
    absmax = W.abs().reshape(16, 2, 32).amax(-1)
    assert (max_val <= absmax).all() and (max_val >= 0.5 * absmax - 1e-6).all()
    clipped = W.clone()
    apply_clip(clipped, max_val)
    assert clipped[0, 5] < 12.0 and (clipped.abs() <= W.abs()).all()

    def err(w):
        q = fake_quantize(w, 3, symmetric=False, granularity="group", group_size=32)
        return ((x @ q.T - x @ W.T) ** 2).mean().item()

    assert err(clipped) < err(W)


def test_whole_model_clips_all_but_q_and_k():
    model = models.tiny_model("llama")
    report = awq_quantize_model(model, _calib(), 4, group_size=64, n_grid=4, progress=False)
    assert report.clipped and not any(n.endswith(("q_proj", "k_proj")) for n in report.clipped)
    assert len(report.clipped) == len(report.quantized) - 2 * 2  # 2 blocks, q and k left out
