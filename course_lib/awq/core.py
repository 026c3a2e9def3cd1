"""AWQ's scale search, one scale group at a time, and the folding that keeps the float model unchanged.

A linear layer computes y = W x. Multiply input channel j of W by s_j and divide x_j by s_j: the
output is the same, y = (W diag(s)) (diag(s)^-1 x). Now quantize the scaled weights:

    y_hat = Q(W diag(s)) diag(s)^-1 x

Rounding adds an error of at most half a grid step to every weight, and the step is set by each
group's largest weight. Scaling up a column whose input is large (a "salient" channel) shrinks its
relative rounding error by about s_j, as long as the group's step barely moves; the other
columns pay for it only a little. AWQ picks s from the activations alone:

    s = mean|x|^r  (per input channel, over calibration tokens),  normalised so max(s) * min(s) = 1

and tries r = 0, 1/20, ..., 19/20, keeping the one whose quantized module output is closest (MSE)
to the float output. r = 0 is s = 1: plain round-to-nearest. The division by s is folded into
whatever produced x (a norm's weight, or the rows of the previous linear layer), so the model
carries no extra operation.

A scale group is (prev, layers, inspect): `prev` produces the input of `layers` and absorbs 1/s;
`inspect` is the submodule whose output the search compares (the attention block for q/k/v, the
MLP for gate/up, the layer itself otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..quant.affine import fake_quantize

N_GRID = 20


@dataclass(frozen=True)
class ScaleGroup:
    prev: str                 # norm or linear whose output feeds `layers` (absorbs 1/s)
    layers: tuple[str, ...]   # linear layers reading that output (their input columns are multiplied by s)
    inspect: str              # submodule whose output the search compares with the float one


_LLAMA = (
    ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)
# model_type -> the scale groups of one decoder block (names relative to the block)
AWQ_ARCHITECTURES: dict[str, tuple[ScaleGroup, ...]] = {
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
    # OPT: fc1 -> ReLU -> fc2; ReLU(x / s) = ReLU(x) / s for s > 0, so fc1's rows can absorb 1/s
    "opt": (
        ScaleGroup("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.out_proj",), "self_attn.out_proj"),
        ScaleGroup("final_layer_norm", ("fc1",), "fc1"),
        ScaleGroup("fc1", ("fc2",), "fc2"),
    ),
}


def scale_groups(model: nn.Module, block: nn.Module) -> list[ScaleGroup]:
    """The scale groups AWQ can use in `block` (a decoder block of `model`), with clear errors otherwise.

    A group whose `prev` is a linear layer needs prev's outputs to be exactly the layers' inputs,
    one to one. v -> o fails that under grouped-query attention: v_proj has fewer outputs (one set
    per key/value head) than o_proj has inputs (each key/value head is repeated for several query
    heads), so one scale per o_proj input has no single v_proj row to fold into. Such groups are
    left out (o_proj is then quantized without a scale), as the reference implementation does."""
    groups = []
    for g in architecture_groups(model):
        prev = block.get_submodule(g.prev)
        first = block.get_submodule(g.layers[0])
        if isinstance(prev, nn.Linear) and prev.out_features != first.in_features:
            continue  # e.g. v -> o under grouped-query attention (see the docstring)
        groups.append(g)
    return groups


def architecture_groups(model: nn.Module) -> tuple[ScaleGroup, ...]:
    """AWQ_ARCHITECTURES[model_type], or an error that says which mapping to provide."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in AWQ_ARCHITECTURES:
        raise ValueError(
            f"AWQ: no scale groups known for architecture {model_type!r} (known: {', '.join(AWQ_ARCHITECTURES)}). "
            f"Provide them: course_lib.awq.AWQ_ARCHITECTURES[{model_type!r}] = (ScaleGroup(prev='<norm before the "
            f"attention>', layers=('<q>', '<k>', '<v>'), inspect='<attention module>'), ...), one entry per "
            f"(producer, consumers) pair whose producer can absorb a per-channel division.")
    return AWQ_ARCHITECTURES[model_type]


def normalise(s: torch.Tensor) -> torch.Tensor:
    """s / sqrt(max(s) * min(s)): afterwards max(s) * min(s) = 1 (the scales straddle 1)."""
    return s / torch.sqrt(s.max() * s.min())


def awq_scales(x_mean: torch.Tensor, ratio: float, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    """s = x_mean^ratio, or with duo scaling x_mean^ratio / w_mean^(1 - ratio); clamped away from 0, normalised."""
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must lie in [0, 1), got {ratio!r}.")
    s = x_mean.clamp(min=1e-4).pow(ratio)
    if w_mean is not None:
        s = s / w_mean.clamp(min=1e-4).pow(1 - ratio)
    return normalise(s.clamp(min=1e-4))


def weight_mean(weights: list[torch.Tensor], group_size: int | None) -> torch.Tensor:
    """Duo scaling's weight statistic: per input channel, the mean over output rows (of all layers) of
    |w| relative to the largest |w| of its quantization group."""
    rows = torch.cat([w.detach().float() for w in weights])
    g = group_size or rows.shape[1]
    blocks = rows.abs().reshape(rows.shape[0], -1, g)
    rel = blocks / blocks.amax(dim=-1, keepdim=True).clamp(min=1e-12)
    return rel.reshape(rows.shape).mean(dim=0)


@dataclass
class ScaleSearch:
    """One group's search: the loss of each ratio, the best ratio and its scales."""

    ratios: list[float]
    losses: list[float]
    best_ratio: float
    scales: torch.Tensor
    loss_rtn: float = field(init=False)

    def __post_init__(self):
        self.loss_rtn = self.losses[0]  # ratio 0 is s = 1, plain round-to-nearest

    @property
    def best_loss(self) -> float:
        return min(self.losses)


@torch.no_grad()
def search_scales(layers: list[nn.Linear], x: torch.Tensor, run_inspect, out_fp: torch.Tensor, bits: int, *,
                  group_size: int | None = 128, symmetric: bool = False, n_grid: int = N_GRID,
                  duo: bool = False) -> ScaleSearch:
    """Try s = awq_scales(mean|x|, r) for r = i / n_grid: quantize each layer as Q(W diag(s)) diag(s)^-1
    (fake-quantized, written into the layers), run `run_inspect()` (the inspected module on its recorded
    inputs) and compare with `out_fp` by MSE. The layers' weights are restored afterwards.

    x: the layers' input, (..., in_features), used for the statistic mean|x| per channel.
    """
    d = layers[0].in_features
    if x.shape[-1] != d:
        raise ValueError(f"x has {x.shape[-1]} features, the layers take {d}.")
    x_mean = x.detach().abs().reshape(-1, d).float().mean(dim=0)
    originals = [layer.weight.detach().clone() for layer in layers]
    w_mean = weight_mean(originals, group_size) if duo else None
    granularity = "group" if group_size else "channel"
    ratios, losses, best = [], [], (float("inf"), 0.0, torch.ones_like(x_mean))
    try:
        for i in range(n_grid):
            r = i / n_grid
            s = awq_scales(x_mean, r, w_mean)
            for layer, w in zip(layers, originals):
                ws = w.float() * s
                q = fake_quantize(ws, bits, symmetric=symmetric, granularity=granularity, group_size=group_size)
                layer.weight.copy_((q / s).to(w.dtype))
            loss = (run_inspect().float() - out_fp.float()).pow(2).mean().item()
            ratios.append(r)
            losses.append(loss)
            if loss < best[0]:
                best = (loss, r, s)
    finally:
        for layer, w in zip(layers, originals):
            layer.weight.copy_(w)
    return ScaleSearch(ratios, losses, best[1], best[2])


@torch.no_grad()
def fold_scales(prev: nn.Module, layers: list[nn.Linear], s: torch.Tensor) -> None:
    """In place: prev's output channel j is divided by s_j, the layers' input column j multiplied by s_j,
    so the float model computes exactly the same function (up to float rounding).
    prev: a norm (RMSNorm / LayerNorm: weight and bias, if any, divided) or a linear (rows and bias)."""
    s = s.detach()
    if isinstance(prev, nn.Linear):
        if prev.out_features != s.numel():
            raise ValueError(f"{prev.out_features} outputs of the previous linear layer, {s.numel()} scales.")
        prev.weight.div_(s.to(prev.weight.dtype)[:, None])
    else:
        weight = getattr(prev, "weight", None)
        if weight is None or weight.dim() != 1 or weight.numel() != s.numel():
            raise ValueError(f"Can't fold scales into {type(prev).__name__}: it needs a per-channel weight of "
                             f"{s.numel()} elements (an RMSNorm or LayerNorm with elementwise affine).")
        weight.div_(s.to(weight.dtype))
    bias = getattr(prev, "bias", None)
    if bias is not None:
        bias.div_(s.to(bias.dtype))
    for layer in layers:
        if layer.in_features != s.numel():
            raise ValueError(f"{layer.in_features} inputs of a layer, {s.numel()} scales.")
        layer.weight.mul_(s.to(layer.weight.dtype)[None, :])


@torch.no_grad()
def search_clip(W: torch.Tensor, x: torch.Tensor, bits: int, *, group_size: int | None = 128, symmetric: bool = False,
                n_grid: int = N_GRID, max_shrink: float = 0.5, row_chunk: int = 256) -> torch.Tensor:
    """AWQ's clipping search: per output row and quantization group, the largest |w| allowed, max_val.

    Clipping the few largest weights of a group shrinks its grid step for all the others. For shrink
    factors 1, 1 - 1/n_grid, ... down to 1 - max_shrink, clamp the group to [-max_val, max_val],
    quantize, and measure the group's contribution to the output on the sample inputs x (tokens, in);
    keep, per row and group, the factor with the smallest squared output error. Returns max_val
    (out, n_groups); shrink 0 (no clipping) is among the candidates, so the error never grows.
    """
    if not 0 <= max_shrink < 1:
        raise ValueError(f"max_shrink must lie in [0, 1), got {max_shrink!r}.")
    out_f, in_f = W.shape
    g = group_size or in_f
    if in_f % g:
        raise ValueError(f"group_size {group_size} does not divide in_features {in_f}.")
    xg = x.detach().float().reshape(-1, in_f // g, g)                       # (tokens, groups, g)
    granularity = "group" if group_size else "channel"
    best_max = torch.empty(out_f, in_f // g, dtype=torch.float32, device=W.device)
    for r0 in range(0, out_f, row_chunk):
        w = W[r0:r0 + row_chunk].detach().float().reshape(-1, in_f // g, g)   # (rows, groups, g)
        ref = torch.einsum("rgk,tgk->rgt", w, xg)                           # each group's share of each output
        max0 = w.abs().amax(dim=-1, keepdim=True)
        best_err = torch.full(w.shape[:2], float("inf"), device=W.device)
        best = max0[..., 0].clone()
        for i in range(int(max_shrink * n_grid) + 1):
            max_val = max0 * (1 - i / n_grid)
            clipped = torch.clamp(w, -max_val, max_val).reshape(-1, in_f)
            q = fake_quantize(clipped, bits, symmetric=symmetric, granularity=granularity,
                              group_size=group_size).reshape(w.shape)
            err = (torch.einsum("rgk,tgk->rgt", q, xg) - ref).pow(2).mean(dim=-1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, max_val[..., 0], best)
        best_max[r0:r0 + row_chunk] = best
    return best_max


@torch.no_grad()
def apply_clip(W: torch.Tensor, max_val: torch.Tensor) -> None:
    """In place: clamp each row's group k of W to [-max_val[row, k], max_val[row, k]]."""
    out_f, in_f = W.shape
    n_groups = max_val.shape[1]
    w = W.view(out_f, n_groups, in_f // n_groups)
    m = max_val.to(W.dtype)[..., None]
    w.copy_(torch.maximum(torch.minimum(w, m), -m))
