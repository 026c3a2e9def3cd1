"""course_lib.awq.smoothquant: scales, folding into norms, simulated W8A8."""

from __future__ import annotations

import pytest
import torch

from course_lib.lm import models
from course_lib.awq.smoothquant import W8A8Linear, activation_absmax, quantize_w8a8, smooth_model, smooth_scales

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _calib(n=4, seq=32, seed=0):
    return torch.randint(0, 4096, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_alpha_half_equalises_activation_and_weight_maxima():
    """After smoothing with alpha = 0.5, per input channel max|X / s| == max|W s| (the layers' actual inputs)."""
    model, calib = models.tiny_model("llama"), _calib()
    with torch.no_grad():
        before = model(calib).logits
        stats = activation_absmax(model, calib)
        smooth_model(model, stats, alpha=0.5)
        after = model(calib).logits
        new_stats = activation_absmax(model, calib)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)  # folding keeps the float model
    block = model.model.layers[0]
    layers = {"model.layers.0.input_layernorm": ("q_proj", "k_proj", "v_proj"),
              "model.layers.0.post_attention_layernorm": ("gate_proj", "up_proj")}
    for key, names in layers.items():
        parent = block.self_attn if "input" in key else block.mlp
        w_max = torch.cat([getattr(parent, n).weight.abs() for n in names]).amax(dim=0)
        torch.testing.assert_close(new_stats[key], w_max, rtol=1e-4, atol=1e-6)
    norms = ("input_layernorm", "post_attention_layernorm")
    assert set(stats) == {f"model.layers.{i}.{n}" for i in (0, 1) for n in norms}


def test_smooth_scales_limits_and_errors():
    a, w = torch.tensor([8.0, 1.0]), torch.tensor([2.0, 4.0])
    torch.testing.assert_close(smooth_scales(a, w, 1.0), a)          # all difficulty to the weights
    torch.testing.assert_close(smooth_scales(a, w, 0.0), 1 / w)      # all to the activations
    with pytest.raises(ValueError, match="alpha"):
        smooth_scales(a, w, 1.5)
    with pytest.raises(ValueError, match="activation channels"):
        smooth_scales(a, torch.ones(3), 0.5)


def test_per_token_w8a8_beats_per_tensor_on_an_outlier_token():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(10, 64)
    x[3] *= 100.0                                     # one token with huge activations
    ref = linear(x)
    normal = torch.arange(10) != 3                   # the other tokens' outputs
    errs = {mode: (W8A8Linear(linear, mode)(x) - ref)[normal].pow(2).mean().item()
            for mode in ("per_tensor", "per_token")}
    assert errs["per_token"] < 0.01 * errs["per_tensor"]  # one shared scale wastes the grid on the outlier token
    with pytest.raises(ValueError, match="per_tensor"):
        W8A8Linear(linear, "per_channel")


def test_quantize_w8a8_replaces_block_linears_only():
    model = models.tiny_model("llama")
    replaced = quantize_w8a8(model, "per_token")
    assert len(replaced) == 2 * 7 and isinstance(model.model.layers[0].mlp.down_proj, W8A8Linear)
    assert isinstance(model.lm_head, torch.nn.Linear)
    with torch.no_grad():
        assert torch.isfinite(model(_calib()).logits).all()


def test_injected_outliers_keep_the_float_model_and_smoothing_removes_them():
    from course_lib.awq.smoothquant import inject_outliers, outlier_ratio, w8a8_rows

    model, calib = models.tiny_model("llama"), _calib()
    with torch.no_grad():
        before = model(calib).logits
        ratio0 = max(outlier_ratio(activation_absmax(model, calib)).values())
        inject_outliers(model, [3, 70], factor=50.0)
        torch.testing.assert_close(model(calib).logits, before, rtol=1e-4, atol=1e-4)
    ratio = max(outlier_ratio(activation_absmax(model, calib)).values())
    assert ratio > 10 * ratio0
    with pytest.raises(ValueError, match="positive"):
        inject_outliers(model, [1], factor=0.0)


def test_w8a8_rows_smoothing_helps_per_tensor_on_injected_outliers():
    from course_lib.lm import perplexity
    from course_lib.awq.smoothquant import inject_outliers, w8a8_rows

    model, calib = models.tiny_model("llama"), _calib(8, 64)
    inject_outliers(model, [3, 70], factor=100.0)
    stream = calib.reshape(-1)
    proto = perplexity.Protocol(seq_len=64, stride=64, max_tokens=512)
    rows = w8a8_rows(model, None, calib, [("per_tensor", None), ("per_tensor", 0.5)], protocol=proto,
                     stream=stream)
    assert [r["alpha"] for r in rows] == ["-", 0.5]
    assert rows[1]["outlier ratio"] < rows[0]["outlier ratio"] / 10
    assert rows[1]["perplexity"] < rows[0]["perplexity"]


def test_helpers_from_channel_stats_match_a_second_pass_and_the_folded_model():
    """absmax_from_stats reuses channel_stats' pass; smoothed_absmax predicts what smooth_model leaves the layers."""
    from course_lib.awq import smoothquant as sq
    from course_lib.awq.teach import channel_stats

    model, calib = models.tiny_model("llama"), _calib()
    stats = channel_stats(model, calib)
    act = sq.absmax_from_stats(model, stats)
    direct = activation_absmax(model, calib)
    assert set(act) == set(direct) and all(torch.equal(act[k], direct[k]) for k in act)
    assert sq.norm_group_layers(model)["model.layers.1.input_layernorm"] == [
        f"model.layers.1.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]
    predicted = sq.smoothed_absmax(model, act, alpha=0.5)
    with torch.no_grad():
        smooth_model(model, act, alpha=0.5)
    measured = activation_absmax(model, calib)
    for key in act:
        torch.testing.assert_close(measured[key], predicted[key], rtol=1e-4, atol=1e-6)
    with pytest.raises(KeyError, match="channel_stats has no entry"):
        sq.absmax_from_stats(model, {})


def test_layer_w8a8_error_smoothing_helps_an_outlier_channel_and_identity_scales_change_nothing():
    from course_lib.awq.smoothquant import layer_w8a8_error

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g)
    x[:, 5] *= 60.0  # one outlier channel in every token
    w = torch.randn(16, 32, generator=g)
    act_max, w_max = x.abs().amax(0), w.abs().amax(0)
    plain = layer_w8a8_error(x, w, "per_tensor")
    assert layer_w8a8_error(x, w, "per_tensor", torch.ones(32)) == pytest.approx(plain, rel=1e-6)
    smoothed = layer_w8a8_error(x, w, "per_tensor", smooth_scales(act_max, w_max, 0.5))
    assert 0 < smoothed < plain / 3
    assert layer_w8a8_error(x, w, "per_token") < plain
    with pytest.raises(ValueError, match="activations must be one of"):
        layer_w8a8_error(x, w, "per_group")
