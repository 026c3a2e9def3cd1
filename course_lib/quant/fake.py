"""Differentiable fake quantization for quantization-aware training (QAT).

    w_hat = fake_quantize_ste(w, bits=4)            # forward: fake_quantize(w); backward: identity
    layer = FakeQuantLinear.from_linear(linear, 4)  # an nn.Linear that trains through fake quantization
    names = attach_fake_quant(model, 4)             # swap every nn.Linear (but lm_head) for one
    detach_fake_quant(model, bake=True)             # back to nn.Linear holding the quantized weights

Rounding has derivative 0 almost everywhere, which would stop all learning. The straight-through
estimator (STE) uses round(x) in the forward pass and pretends it was the identity in the
backward pass: d round(x) / dx := 1. With w_hat = s * (clamp(round(w / s) + z) - z) and the scale
s and zero point z treated as constants, d w_hat / d w = s * 1 * (1 / s) = 1 inside the clamp range
and 0 where the clamp is active. The scales are recomputed from w on every call and detached: no
gradient flows through them. Since they come from abs-max / min-max, the clamp is (almost) never
active: only an exact rounding tie at the top of an asymmetric range is clipped (and gets gradient 0).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .affine import check_args, compute_scale_zero, fake_quantize, qrange, quantize_blocks, to_blocks


class _RoundSTE(torch.autograd.Function):
    """torch.round forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) (half to even) whose gradient is passed straight through: d/dx = 1."""
    return _RoundSTE.apply(x)


def fake_quantize_ste(w: torch.Tensor, bits: int = 8, *, symmetric: bool = True, granularity: str = "channel",
                      group_size: int | None = 128, restricted: bool = False) -> torch.Tensor:
    """fake_quantize(w, ...) with a straight-through gradient: same forward values (bit for bit),
    d out / d w = 1 inside the clamp range. Scales and zero points are recomputed from w and detached."""
    group_size = check_args(w, bits, granularity, group_size)
    qmin, qmax = qrange(bits, symmetric, restricted=restricted)
    blocks = to_blocks(w.to(torch.float32), granularity, group_size)
    scale, zero = compute_scale_zero(blocks.detach(), bits, symmetric, restricted)
    q = quantize_blocks(blocks, scale, zero, qmin, qmax, round_fn=round_ste)
    return (scale * (q - zero)).reshape(w.shape).to(w.dtype)


class FakeQuantLinear(nn.Module):
    """A linear layer whose float weight is fake-quantized (with STE) on every forward pass.

    y = x @ fake_quantize_ste(W)^T + b. The float weight W is the trained parameter (the "shadow"
    weights); the quantized one is what the deployed integer model would use."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 4,
                 symmetric: bool = True, granularity: str = "group", group_size: int | None = 128,
                 restricted: bool = False, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default initialisation
        self.bits, self.symmetric, self.granularity = bits, symmetric, granularity
        self.group_size = group_size if granularity == "group" else None
        self.restricted = restricted
        check_args(self.weight, bits, granularity, group_size)  # fail now, not at the first forward

    def quant_kwargs(self) -> dict:
        return dict(symmetric=self.symmetric, granularity=self.granularity, group_size=self.group_size,
                    restricted=self.restricted)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, *, symmetric: bool = True, granularity: str = "group",
                    group_size: int | None = 128, restricted: bool = False) -> FakeQuantLinear:
        """Wrap an existing nn.Linear; the new layer shares its weight and bias Parameters."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}.")
        check_args(linear.weight, bits, granularity, group_size)
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, bits=bits,
                    symmetric=symmetric, granularity=granularity, group_size=group_size, restricted=restricted,
                    device="meta", dtype=linear.weight.dtype)  # meta: allocate nothing, the Parameters follow
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight without gradient tracking (what `bake` writes)."""
        return fake_quantize(self.weight.detach(), self.bits, **self.quant_kwargs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, fake_quantize_ste(self.weight, self.bits, **self.quant_kwargs()), self.bias)

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        group = f", group_size={self.group_size}" if self.granularity == "group" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={self.bits}, {kind}, granularity={self.granularity}{group}")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def attach_fake_quant(model: nn.Module, bits: int, *, symmetric: bool = True, granularity: str = "group",
                      group_size: int | None = 128, skip: tuple[str, ...] = ("lm_head",),
                      restricted: bool = False) -> list[str]:
    """Replace, in place, every nn.Linear whose name does not end in `skip` by a FakeQuantLinear
    (sharing its Parameters). Returns the names replaced. All layers are checked before any is replaced."""
    from transformers.pytorch_utils import Conv1D

    from ..lm.models import linear_layers

    layers = {n: m for n, m in linear_layers(model, skip=skip).items() if not isinstance(m, FakeQuantLinear)}
    for name, m in layers.items():
        if isinstance(m, Conv1D):
            raise TypeError(f"Layer {name!r} is a GPT-2 style Conv1D: not supported for QAT; convert it to nn.Linear "
                            f"first (weight = conv1d.weight.t()) or use a model with nn.Linear layers.")
        try:
            check_args(m.weight, bits, granularity, group_size)
        except ValueError as exc:
            raise ValueError(f"Layer {name!r} (weight {tuple(m.weight.shape)}): {exc}") from None
    for name, m in layers.items():
        _set_submodule(model, name, FakeQuantLinear.from_linear(
            m, bits, symmetric=symmetric, granularity=granularity, group_size=group_size, restricted=restricted))
    return list(layers)


def detach_fake_quant(model: nn.Module, *, bake: bool = True) -> list[str]:
    """Turn every FakeQuantLinear back into an nn.Linear, in place; with `bake` its weight becomes the
    fake-quantized weight (the model then computes exactly what it computed in training), otherwise
    the float weight is kept. Returns the names replaced."""
    names = [n for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    for name in names:
        fq = model.get_submodule(name)
        w = fq.weight
        linear = nn.Linear(fq.in_features, fq.out_features, bias=fq.bias is not None, device=w.device, dtype=w.dtype)
        linear.weight = nn.Parameter(fq.quantized_weight(), requires_grad=w.requires_grad) if bake else w
        if fq.bias is not None:
            linear.bias = fq.bias
        _set_submodule(model, name, linear)
    return names
