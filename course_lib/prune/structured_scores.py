"""Importance scores for structured pruning: one number per attention head / KV group / MLP channel.

    head_importance(model, calib, method="taylor", level="kv_group")   # (n_layers, n_kv_heads)
    mlp_importance(model, calib, method="activation")                   # (n_layers, intermediate)
    attention_mass(model, calib)                                         # the seed's score (it can't rank!)

Scores of a coupled group (see ``course_lib.prune.structured``) are built from an element-wise map
over its weights, summed over the group's rows/columns:

    magnitude  ||W_group||_F = sqrt(sum of w^2 over the group's weights and biases)
    taylor     sum over the group of |w * dL/dw|   (LLM-Pruner's element-wise first-order term:
               removing w changes the loss by about -w dL/dw; L = mean LM loss on the calibration set)
    activation (MLP only) mean over calibration tokens of |act(gate(x)) * up(x)|, the down_proj input

The seed's "attention mass" sums each head's softmax probabilities. Every row of a softmax sums to
1, so it equals (sequences x query positions) for every head: it cannot rank heads.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..lm.tokens import check_token_ids
from .structured import attention_shape, decoder_layers, params_per_channel, params_per_kv_group, params_per_query_head

HEAD_METHODS = ("taylor", "magnitude", "attention_mass")
MLP_METHODS = ("taylor", "magnitude", "activation")
LEVELS = ("query", "kv_group")

ElementMaps = dict[nn.Linear, tuple[torch.Tensor, torch.Tensor | None]]


def _batches(model, calibration, batch_size: int) -> Iterator[torch.Tensor]:
    calibration = check_token_ids(calibration)
    device = next(model.parameters()).device
    for i in range(0, len(calibration), batch_size):
        yield calibration[i : i + batch_size].to(device)


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-layer scores; layers already pruned to fewer units are padded with NaN."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), float("nan"), dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r.detach().cpu()
    return out


# --- the seed's score --------------------------------------------------------------------------

@torch.no_grad()
def attention_mass(model, calibration, *, batch_size: int = 8) -> torch.Tensor:
    """The seed's ``compute_head_importance``: score[l, h] = sum of head h's attention probabilities.

    Needs the attention matrices, which only the eager implementation returns
    (``output_attentions=True``; SDPA returns None), so the model is switched to eager and back.
    Each softmax row sums to 1, so every head scores n_samples * seq_len (float64 sums).
    """
    layers = decoder_layers(model)
    before, was_training = model.config._attn_implementation, model.training
    model.eval()
    model.set_attn_implementation("eager")
    try:
        total = [torch.zeros(attention_shape(layer.self_attn).n_heads, dtype=torch.float64) for layer in layers]
        for batch in _batches(model, calibration, batch_size):
            attentions = model(input_ids=batch, output_attentions=True).attentions  # each (B, heads, T, T)
            for layer, attn in enumerate(attentions):
                total[layer] += attn.double().sum(dim=(0, 2, 3)).cpu()
    finally:
        model.set_attn_implementation(before)
        model.train(was_training)
    return _stack(total)


# --- element-wise maps -------------------------------------------------------------------------

def _linears(model) -> list[nn.Linear]:
    out = []
    for layer in decoder_layers(model):
        a, m = layer.self_attn, layer.mlp
        out += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
    return out


def element_maps(model, method: str, calibration=None, *, batch_size: int = 8) -> ElementMaps:
    """{linear: (map of its weight, map of its bias or None)} for every projection of the blocks.

    magnitude: w^2.  taylor: |w * dL/dw| with L the mean next-token loss over all calibration
    sequences (gradients accumulated over mini-batches, model in eval mode: no dropout).
    """
    linears = _linears(model)
    if method == "magnitude":
        return {lin: (lin.weight.detach().float() ** 2,
                      None if lin.bias is None else lin.bias.detach().float() ** 2) for lin in linears}
    if method != "taylor":
        raise ValueError(f"element_maps: method must be 'magnitude' or 'taylor', got {method!r}.")
    if calibration is None:
        raise ValueError("Taylor importance needs calibration token ids (n_samples, seq_len) to compute the loss.")
    calibration = check_token_ids(calibration)
    params = [p for lin in linears for p in (lin.weight, lin.bias) if p is not None]
    grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    flags, was_training = [p.requires_grad for p in params], model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        n = len(calibration)
        for batch in _batches(model, calibration, batch_size):
            loss = model(input_ids=batch, labels=batch).loss * (len(batch) / n)  # L = mean over all sequences
            for g, dg in zip(grads, torch.autograd.grad(loss, params)):
                g += dg.float()
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    saliency = {id(p): (p.detach().float() * g).abs() for p, g in zip(params, grads)}  # |w dL/dw|
    return {lin: (saliency[id(lin.weight)], None if lin.bias is None else saliency[id(lin.bias)]) for lin in linears}


def _unit_sums(maps: ElementMaps, linear: nn.Linear, dim: int, unit: int) -> torch.Tensor:
    """Sum a layer's map over units of `unit` consecutive output rows (dim 0, bias included)
    or input columns (dim 1)."""
    w, b = maps[linear]
    if dim == 0:
        total = w.reshape(-1, unit, w.shape[1]).sum(dim=(1, 2))
        return total if b is None else total + b.reshape(-1, unit).sum(dim=1)
    return w.reshape(w.shape[0], -1, unit).sum(dim=(0, 2))


def head_sums(attn: nn.Module, maps: ElementMaps, level: str) -> torch.Tensor:
    """Per query head: q rows (+ q bias) + o columns. Per KV group: its query heads + k and v rows (+ biases)."""
    s = attention_shape(attn)
    per_head = _unit_sums(maps, attn.q_proj, 0, s.head_dim) + _unit_sums(maps, attn.o_proj, 1, s.head_dim)
    if level == "query":
        return per_head
    kv = _unit_sums(maps, attn.k_proj, 0, s.head_dim) + _unit_sums(maps, attn.v_proj, 0, s.head_dim)
    return per_head.reshape(s.n_kv_heads, s.group_size).sum(dim=1) + kv


def channel_sums(mlp: nn.Module, maps: ElementMaps) -> torch.Tensor:
    """Per channel c: gate row c + up row c (+ their biases) + down column c."""
    return (_unit_sums(maps, mlp.gate_proj, 0, 1) + _unit_sums(maps, mlp.up_proj, 0, 1)
            + _unit_sums(maps, mlp.down_proj, 1, 1))


# --- public scores -----------------------------------------------------------------------------

def _check(method: str, allowed: tuple[str, ...], what: str) -> None:
    if method not in allowed:
        raise ValueError(f"{what} importance method must be one of {', '.join(allowed)}; got {method!r}.")


def to_kv_groups(scores: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """Sum per-query-head scores (n_layers, n_heads) over each KV group: (n_layers, n_kv_heads).

    Query head h belongs to KV head h // G (G = n_heads / n_kv_heads, transformers' repeat_kv order).
    """
    n_layers, n_heads = scores.shape
    if n_heads % n_kv_heads:
        raise ValueError(f"{n_heads} query heads don't split into {n_kv_heads} equal KV groups.")
    return scores.reshape(n_layers, n_kv_heads, n_heads // n_kv_heads).sum(dim=-1)


def head_importance(model, calibration=None, *, method: str = "taylor", level: str = "query",
                    batch_size: int = 8, maps: ElementMaps | None = None) -> torch.Tensor:
    """Importance of every query head (level "query") or KV group (level "kv_group"): (n_layers, n).

    `maps` reuses element maps already computed (one backward pass serves heads and MLP alike).
    """
    _check(method, HEAD_METHODS, "Head")
    if level not in LEVELS:
        raise ValueError(f"level must be 'query' or 'kv_group', got {level!r}.")
    layers = decoder_layers(model)
    if method == "attention_mass":
        scores = attention_mass(model, calibration, batch_size=batch_size)
        if level == "query":
            return scores
        return _stack([to_kv_groups(row[None, : attention_shape(layer.self_attn).n_heads],
                                    attention_shape(layer.self_attn).n_kv_heads)[0]
                       for row, layer in zip(scores, layers)])
    maps = maps or element_maps(model, method, calibration, batch_size=batch_size)
    scores = _stack([head_sums(layer.self_attn, maps, level) for layer in layers])
    return scores.sqrt() if method == "magnitude" else scores


@torch.no_grad()
def mean_abs_activation(model, calibration, *, batch_size: int = 8) -> torch.Tensor:
    """Per MLP channel: mean over calibration tokens of |act(gate(x)) * up(x)| (the down_proj input)."""
    layers = decoder_layers(model)
    sums = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    tokens = [0]

    def hook(i):
        def record(module, inputs):
            h = inputs[0].detach()
            sums[i] += h.abs().double().sum(dim=tuple(range(h.dim() - 1))).cpu()
        return record

    handles = [layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for batch in _batches(model, calibration, batch_size):
            model(input_ids=batch)
            tokens[0] += batch.numel()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return _stack([s / tokens[0] for s in sums])


def mlp_importance(model, calibration=None, *, method: str = "taylor", batch_size: int = 8,
                   maps: ElementMaps | None = None) -> torch.Tensor:
    """Importance of every MLP intermediate channel: (n_layers, intermediate)."""
    _check(method, MLP_METHODS, "MLP")
    if method == "activation":
        return mean_abs_activation(model, calibration, batch_size=batch_size)
    maps = maps or element_maps(model, method, calibration, batch_size=batch_size)
    scores = _stack([channel_sums(layer.mlp, maps) for layer in decoder_layers(model)])
    return scores.sqrt() if method == "magnitude" else scores


def additive(scores: torch.Tensor, method: str) -> torch.Tensor:
    """Scores that add up over weights (and so over units): a magnitude, being a norm, enters squared."""
    return scores**2 if method == "magnitude" else scores


def per_parameter(scores: torch.Tensor, method: str, n_params: int | torch.Tensor) -> torch.Tensor:
    """Make scores of units of different sizes comparable: importance per removed parameter.

    taylor and attention_mass are sums, so divide by the unit's parameter count (taylor becomes the
    mean |w dL/dw| per weight). magnitude is a norm, whose square is the sum: ||W||^2 / n is the mean
    squared weight of the unit. activation (MLP channels only, all of one size) is divided too,
    which leaves its order unchanged.
    """
    return additive(scores, method) / n_params


def unit_params(model, kind: str) -> list[int]:
    """Parameters removed with one unit, per layer: kind "query" head, "kv_group" or "mlp" channel."""
    layers = decoder_layers(model)
    if kind == "query":
        return [params_per_query_head(layer.self_attn) for layer in layers]
    if kind == "kv_group":
        return [params_per_kv_group(layer.self_attn) for layer in layers]
    return [params_per_channel(layer.mlp) for layer in layers]
