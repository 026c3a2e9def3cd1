"""SmoothQuant (Xiao et al. 2023), written for the course: move activation outliers into the weights, then W8A8.

    act_max = activation_absmax(model, calibration)          # per input channel, per norm -> layers group
    scales = smooth_model(model, act_max, alpha=0.5)           # folds s into the norms: same float model
    quantize_w8a8(model, activations="per_token")             # simulated int8 weights and activations

Activations of LLMs have a few channels with much larger values than the rest, in every token;
rounding a whole token (or tensor) to int8 with one scale wastes the grid on those channels.
Weights have no such outliers. Per input channel j, SmoothQuant divides the activation by s_j and
multiplies the weight column by s_j (the product is unchanged), with

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

so that alpha = 0.5 makes max|X_j / s_j| = max|W_j s_j| = sqrt(max|X_j| max|W_j|): the difficulty is
split evenly. The division is folded into the norm before the layers (the same folding as AWQ's).
"""

from __future__ import annotations

import torch
from torch import nn

from .core import fold_scales, scale_groups
from ..quant.affine import fake_quantize

__all__ = ["activation_absmax", "absmax_from_stats", "norm_readers", "norm_group_layers", "group_weight_absmax",
           "smoothed_absmax", "smooth_scales", "smooth_model", "W8A8Linear",
           "quantize_w8a8", "ACTIVATION_MODES", "layer_w8a8_error", "outlier_ratio", "inject_outliers", "w8a8_rows"]

# activation mode -> the granularity of quant.affine that gives it (a token is a row of the flattened input)
ACTIVATION_MODES = {"per_tensor": "tensor", "per_token": "channel"}


def _check_mode(activations: str) -> None:
    if activations not in ACTIVATION_MODES:
        raise ValueError(f"activations must be one of {tuple(ACTIVATION_MODES)}, got {activations!r}.")


def _norm_groups(model: nn.Module):
    """(block path, block, [scale groups whose producer is a norm]) for every decoder block."""
    from ..lm.blocks import find_blocks

    path, blocks, _ = find_blocks(model)
    for i, block in enumerate(blocks):
        groups = [g for g in scale_groups(model, block) if not isinstance(block.get_submodule(g.prev), nn.Linear)]
        yield f"{path}.{i}", block, groups


@torch.no_grad()
def activation_absmax(model: nn.Module, calibration: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """max over calibration tokens of |x_j|, per input channel j, for the input of each norm -> layers group.
    Keys: "<block path>.<norm name>", e.g. "model.layers.0.input_layernorm"."""
    from .teach import channel_stats

    readers = norm_readers(model)
    stats = channel_stats(model, calibration, list(readers.values()), batch_size)  # one layer reading each norm
    return absmax_from_stats(model, stats)


def norm_readers(model: nn.Module) -> dict[str, str]:
    """{norm key: the first linear layer that reads that norm's output}, e.g.
    {"model.layers.0.input_layernorm": "model.layers.0.self_attn.q_proj", ...}."""
    return {f"{path}.{g.prev}": f"{path}.{g.layers[0]}" for path, _, groups in _norm_groups(model) for g in groups}


def norm_group_layers(model: nn.Module) -> dict[str, list[str]]:
    """{norm key: full names of the linear layers that read that norm's output (q/k/v, or gate/up)}."""
    return {f"{path}.{g.prev}": [f"{path}.{n}" for n in g.layers] for path, _, groups in _norm_groups(model) for g in groups}


def group_weight_absmax(model: nn.Module, key: str) -> torch.Tensor:
    """max |W_ij| over the output rows of every layer that reads norm `key`, per input column j."""
    names = norm_group_layers(model)[key]
    return torch.cat([model.get_submodule(n).weight.detach().abs().float() for n in names]).amax(dim=0)


def smoothed_absmax(model: nn.Module, act_absmax: dict[str, torch.Tensor], alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """What smooth_model(model, act_absmax, alpha) would leave the layers to read, max |X_j| / s_j per norm
    key, computed from the statistics alone (the model is not changed)."""
    out = {}
    for key, act in act_absmax.items():
        w_max = group_weight_absmax(model, key)
        out[key] = act.to(w_max.device) / smooth_scales(act.to(w_max.device), w_max, alpha)
    return out


def absmax_from_stats(model: nn.Module, stats: dict) -> dict[str, torch.Tensor]:
    """activation_absmax's result from channel statistics already measured (awq.teach.channel_stats covering
    the layers that read the norms), without another pass over the calibration data."""
    readers = norm_readers(model)
    missing = [name for name in readers.values() if name not in stats]
    if missing:
        raise KeyError(f"channel_stats has no entry for {missing[:3]}...; measure every block linear "
                       f"(teach.channel_stats(model, calib)) or call activation_absmax(model, calib).")
    return {key: stats[name]["max"] for key, name in readers.items()}


def smooth_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = max|X|^alpha / max|W|^(1 - alpha), per input channel (both clamped away from 0)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha (migration strength) must lie in [0, 1], got {alpha!r}; 0.5 is the paper's default.")
    if act_absmax.shape != weight_absmax.shape:
        raise ValueError(f"{act_absmax.numel()} activation channels, {weight_absmax.numel()} weight columns.")
    return act_absmax.clamp(min=1e-5).pow(alpha) / weight_absmax.clamp(min=1e-5).pow(1 - alpha)


@torch.no_grad()
def smooth_model(model: nn.Module, act_absmax: dict[str, torch.Tensor], alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """Fold SmoothQuant's scales into the norms of every block (in place); returns the scales by group key."""
    scales = {}
    for path, block, groups in _norm_groups(model):
        for g in groups:
            key = f"{path}.{g.prev}"
            if key not in act_absmax:
                raise KeyError(f"No activation statistics for {key}; compute them with "
                               f"activation_absmax(model, calib).")
            layers = [block.get_submodule(n) for n in g.layers]
            w_max = torch.cat([layer.weight.detach().abs().float() for layer in layers]).amax(dim=0)
            s = smooth_scales(act_absmax[key].to(w_max.device), w_max, alpha)
            fold_scales(block.get_submodule(g.prev), layers, s)
            scales[key] = s
    return scales


def _fake_quantize_activation(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Symmetric int8 fake quantization of activations, one scale per tensor or per token (row), computed on the fly."""
    q = fake_quantize(x.reshape(-1, x.shape[-1]), 8, granularity=ACTIVATION_MODES[mode])
    return q.reshape(x.shape).to(x.dtype)


class W8A8Linear(nn.Module):
    """A linear layer that computes with int8-rounded weights (per output channel) and int8-rounded inputs
    (per tensor or per token, dynamic): simulated W8A8, in float arithmetic."""

    def __init__(self, linear: nn.Linear, activations: str = "per_token"):
        super().__init__()
        _check_mode(activations)
        self.activations = activations
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = fake_quantize(linear.weight.detach(), 8, granularity="channel")
        self.weight = nn.Parameter(w.to(linear.weight.dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(_fake_quantize_activation(x, self.activations), self.weight, self.bias)


@torch.no_grad()
def quantize_w8a8(model: nn.Module, activations: str = "per_token", skip: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Replace every nn.Linear of the decoder blocks (names not ending in `skip`) by a W8A8Linear, in place."""
    from ..lm.blocks import find_blocks

    _check_mode(activations)  # before any layer is replaced
    path, blocks, _ = find_blocks(model)
    replaced = []
    for i, block in enumerate(blocks):
        for name, module in list(block.named_modules()):
            if isinstance(module, nn.Linear) and not name.endswith(skip):
                parent_name, _, child = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                setattr(parent, child, W8A8Linear(module, activations))
                replaced.append(f"{path}.{i}.{name}")
    return replaced


@torch.no_grad()
def layer_w8a8_error(x: torch.Tensor, weight: torch.Tensor, activations: str = "per_token",
                     scales: torch.Tensor | None = None) -> float:
    """Relative error of one linear layer's output under simulated W8A8, on captured inputs x (..., in):
    ||Q(x / s) Q(W s)^T - x W^T|| / ||x W^T||, Q = int8 (weights per output channel, activations per tensor
    or per token), s = SmoothQuant's scales for the layer's input (None: no smoothing)."""
    _check_mode(activations)
    x = x.reshape(-1, x.shape[-1]).float()
    w = weight.detach().float()
    s = torch.ones(w.shape[1], device=w.device) if scales is None else scales.to(w.device).float()
    y = x @ w.T
    y_hat = _fake_quantize_activation(x / s, activations) @ fake_quantize(w * s, 8, granularity="channel").T
    return (torch.linalg.vector_norm(y_hat - y) / torch.linalg.vector_norm(y)).item()


def outlier_ratio(act_absmax: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per group: the largest channel maximum over the median channel maximum (1 = no outlier channel)."""
    return {k: (v.max() / v.median().clamp(min=1e-12)).item() for k, v in act_absmax.items()}


@torch.no_grad()
def inject_outliers(model: nn.Module, channels, factor: float = 30.0) -> None:
    """An experiment, not a method: make `channels` of every norm's output `factor` times larger and divide
    the matching weight columns of the layers that read them by `factor` (fold_scales with s = 1/factor).
    The float model computes the same function, but its activations now carry outlier channels, the
    pattern that large LLMs show (a few channels 10-100x larger in every token) and small ones lack."""
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor!r}.")
    for _, block, groups in _norm_groups(model):
        for g in groups:
            layers = [block.get_submodule(n) for n in g.layers]
            s = torch.ones(layers[0].in_features, device=layers[0].weight.device)
            s[torch.as_tensor(channels, device=s.device)] = 1.0 / factor
            fold_scales(block.get_submodule(g.prev), layers, s)


def w8a8_rows(model: nn.Module, tokenizer, calibration: torch.Tensor, settings, *, protocol=None,
              stream=None) -> list[dict]:
    """Simulated W8A8 perplexity for each (activations, alpha) in `settings`, on fresh copies of `model`;
    alpha None = no smoothing. The activation maxima are measured once, on `model`. Rows: activations,
    alpha, "outlier ratio" (largest / median channel maximum after smoothing, worst group), perplexity
    (`protocol`, default FAST; `stream` replaces the test split's tokens, as in perplexity())."""
    import copy

    from ..lm.perplexity import FAST, perplexity

    act = activation_absmax(model, calibration)
    rows = []
    for activations, alpha in settings:
        _check_mode(activations)
        m = copy.deepcopy(model)
        after = act
        if alpha is not None:
            scales = smooth_model(m, act, alpha)
            after = {k: v / scales[k] for k, v in act.items()}  # X / s: what the layers now read
        quantize_w8a8(m, activations)
        rows.append({"activations": activations, "alpha": "-" if alpha is None else alpha,
                     "outlier ratio": max(outlier_ratio(after).values()),
                     "perplexity": perplexity(m, tokenizer, protocol or FAST, stream=stream).ppl})
    return rows
