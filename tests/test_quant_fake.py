"""course_lib.quant.fake: straight-through rounding, FakeQuantLinear, attach/detach on a tiny Llama."""

import pytest
import torch
from torch import nn

from course_lib.lm import models
from course_lib.quant import (
    GRANULARITIES,
    FakeQuantLinear,
    attach_fake_quant,
    detach_fake_quant,
    fake_quantize,
    fake_quantize_ste,
    quantize_model_rtn,
    round_ste,
)


def test_round_ste_rounds_forward_and_passes_gradient():
    x = torch.tensor([0.4, 0.5, 1.5, -2.7], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 0.0, 2.0, -3.0]  # half to even
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gran", GRANULARITIES)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_ste_matches_fake_quantize_and_has_identity_gradient(symmetric, gran, bits):
    w = (torch.randn(8, 32) * torch.exp(torch.randn(8, 1))).requires_grad_()
    out = fake_quantize_ste(w, bits, symmetric=symmetric, granularity=gran, group_size=16)
    assert torch.equal(out.detach(), fake_quantize(w.detach(), bits, symmetric=symmetric, granularity=gran,
                                                   group_size=16))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # d/dw = s * 1 * (1/s) = 1 exactly, scales detached


def test_ste_keeps_dtype_and_gradient_for_bfloat16():
    w = torch.randn(4, 16, dtype=torch.bfloat16, requires_grad=True)
    out = fake_quantize_ste(w, 4, granularity="group", group_size=8)
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_fake_quant_linear_trains_its_float_weight():
    torch.manual_seed(0)
    linear = nn.Linear(32, 8)
    layer = FakeQuantLinear.from_linear(linear, 4, granularity="group", group_size=16)
    assert layer.weight is linear.weight and layer.bias is linear.bias  # shared Parameters
    assert "bits=4" in repr(layer) and "granularity=group" in repr(layer) and "group_size=16" in repr(layer)
    x = torch.randn(5, 32)
    expected = x @ fake_quantize(linear.weight.detach(), 4, granularity="group", group_size=16).T + linear.bias
    assert torch.allclose(layer(x), expected, atol=1e-6)
    before = layer.weight.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(layer.weight.detach(), before)


def test_fake_quant_linear_constructor_checks_its_settings():
    layer = FakeQuantLinear(64, 4, bias=False, bits=3, granularity="channel")
    assert layer(torch.randn(2, 64)).shape == (2, 4) and "granularity=channel" in repr(layer)
    with pytest.raises(ValueError, match="does not divide"):
        FakeQuantLinear(100, 4, bits=4, granularity="group", group_size=128)


def test_attach_detach_round_trip_on_tiny_llama():
    model = models.tiny_model("llama")
    ids = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        float_logits = model(ids).logits
    rtn = quantize_model_rtn(model, 4, granularity="group", group_size=64, inplace=False).model
    names = attach_fake_quant(model, 4, granularity="group", group_size=64)
    assert len(names) == 2 * 7 and not any(n.endswith("lm_head") for n in names)
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, FakeQuantLinear)
    with torch.no_grad():
        expected = rtn(ids).logits
        assert torch.allclose(model(ids).logits, expected, atol=1e-5)
    assert attach_fake_quant(model, 4, granularity="group", group_size=64) == []  # already attached
    assert detach_fake_quant(model, bake=True) == names
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, expected, atol=1e-5)
    # bake=False hands back the float weights unchanged
    model = models.tiny_model("llama")
    attach_fake_quant(model, 4, group_size=64)
    detach_fake_quant(model, bake=False)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, float_logits)


def test_attach_rejects_conv1d_and_bad_group_size():
    with pytest.raises(TypeError, match="Conv1D"):
        attach_fake_quant(models.tiny_model("gpt2"), 4)
    model = models.tiny_model("llama")
    with pytest.raises(ValueError, match=r"q_proj.*does not divide"):
        attach_fake_quant(model, 4, group_size=96)
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())  # nothing half-replaced
