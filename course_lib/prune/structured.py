"""Structured pruning: remove whole attention heads and MLP channels, so the model really shrinks.

    prune_heads(model, {0: [1], 5: [0]}, mode="kv_group")   # drop KV heads with all their query heads
    prune_heads(model, {3: [0, 3]}, mode="query")           # drop query heads (same number per KV group)
    prune_mlp_channels(model, {2: [7, 100, 511]})           # drop intermediate channels of the gated MLP
    mask_heads(...), mask_mlp_channels(...)                 # the same removal by zeroing weights in place

The coupled groups (the weights that must go together, LLM-Pruner's "dependency groups"), for a
layer with hidden size H, head dim d and G query heads per KV head:

    query head h   q_proj rows [h d, (h+1) d) (+ their q bias) and o_proj columns [h d, (h+1) d)
    KV head g      its G query heads as above, plus k_proj and v_proj rows [g d, (g+1) d) (+ biases)
    MLP channel c  gate_proj row c, up_proj row c (+ biases), down_proj column c

Slicing builds new nn.Linear modules holding only the kept rows/columns. Masking zeroes the same
rows/columns in place; in exact arithmetic the two models compute the same function, which is
how the tests check the slicing. Layers may end with different head counts and MLP widths.

transformers' attention reads the head counts from the module, not the config: it reshapes with
``view(..., -1, head_dim)`` and repeats each KV head ``module.num_key_value_groups`` times (eager
attention, and SDPA whenever it can't use ``enable_gqa``). So slicing updates that attribute per
layer. ``model.config`` keeps the original, layer-independent numbers: a config has one head count
for all layers, and the rotary embedding derives head_dim from ``num_attention_heads`` when the
config has no ``head_dim``; changing it could silently break RoPE. The cost: a pruned model can't
be reloaded with ``from_pretrained`` (it would build every layer from the config's sizes). Generation
works: transformers 5.17's caches (dynamic and static) size each layer from the first key/value
tensors they receive. Without the per-layer update, eager attention fails after query-mode pruning,
while SDPA without a padding mask still runs (it passes ``enable_gqa`` and infers G' from the shapes),
so a forgotten attribute can go unnoticed until a batch with padding arrives.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

SUPPORTED = ("llama", "qwen2", "mistral")
MODES = ("kv_group", "query")


# --- architecture and shapes -------------------------------------------------------------------

def check_architecture(model) -> None:
    """Raise unless `model` is a decoder this module knows how to slice."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED:
        raise ValueError(f"Structured pruning supports {', '.join(SUPPORTED)} models (q/k/v/o_proj attention and a "
                         f"gate/up/down MLP); got model_type {model_type!r}. OPT and GPT-2 lay out their "
                         "attention differently and are not handled here.")


def decoder_layers(model) -> nn.ModuleList:
    """The model's decoder blocks (``model.model.layers``)."""
    check_architecture(model)
    return getattr(model, "model", model).layers


@dataclass(frozen=True)
class AttentionShape:
    """Head counts of one attention module, read from its weight shapes (not from the config)."""

    n_heads: int      # query heads
    n_kv_heads: int
    head_dim: int
    hidden: int

    @property
    def group_size(self) -> int:
        """G = query heads per KV head (1: multi-head attention, n_heads: multi-query attention)."""
        return self.n_heads // self.n_kv_heads


def attention_shape(attn: nn.Module) -> AttentionShape:
    d = attn.head_dim
    return AttentionShape(n_heads=attn.q_proj.out_features // d, n_kv_heads=attn.k_proj.out_features // d,
                          head_dim=d, hidden=attn.q_proj.in_features)


def head_counts(model) -> list[tuple[int, int]]:
    """(query heads, KV heads) of every layer."""
    return [(s.n_heads, s.n_kv_heads) for s in (attention_shape(layer.self_attn) for layer in decoder_layers(model))]


def mlp_widths(model) -> list[int]:
    """The intermediate size of every layer's MLP."""
    return [layer.mlp.gate_proj.out_features for layer in decoder_layers(model)]


def count_params(module: nn.Module) -> int:
    """Number of parameters (a tied weight counted once, as ``module.parameters()`` yields it once)."""
    return sum(p.numel() for p in module.parameters())


def block_params(model) -> int:
    """Parameters inside the decoder blocks (attention, MLP, norms): what structured pruning can shrink."""
    return count_params(decoder_layers(model))


def _bias(linear: nn.Linear) -> int:
    return 0 if linear.bias is None else 1


def params_per_query_head(attn: nn.Module) -> int:
    """d H (q rows) + d (q bias, if any) + H d (o columns)."""
    s = attention_shape(attn)
    return s.head_dim * s.hidden * 2 + s.head_dim * _bias(attn.q_proj)


def params_per_kv_group(attn: nn.Module) -> int:
    """G query heads + d H (k rows) + d H (v rows) + their biases."""
    s = attention_shape(attn)
    kv = s.head_dim * (2 * s.hidden + _bias(attn.k_proj) + _bias(attn.v_proj))
    return s.group_size * params_per_query_head(attn) + kv


def params_per_channel(mlp: nn.Module) -> int:
    """H (gate row) + H (up row) + H (down column) + gate/up biases."""
    return 3 * mlp.gate_proj.in_features + _bias(mlp.gate_proj) + _bias(mlp.up_proj)


# --- validating what to remove -----------------------------------------------------------------

def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'kv_group' (indices are KV heads) or 'query' (indices are query heads); "
                         f"got {mode!r}.")


def _indices(spec: Mapping[int, Iterable[int]], n_layers: int, what: str, sizes: list[int]) -> dict[int, list[int]]:
    """Validated {layer: sorted indices}: layers and indices in range, integers, no duplicates."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"Give the {what} to remove as a dict {{layer index: [indices]}}, got {type(spec).__name__}.")
    out: dict[int, list[int]] = {}
    for layer, items in spec.items():
        try:
            layer = operator.index(layer)
            items = [operator.index(i) for i in items]
        except TypeError:
            raise TypeError(f"Layer and {what} indices must be integers; got layer {layer!r}: {items!r}.") from None
        if not 0 <= layer < n_layers:
            raise ValueError(f"Layer index {layer} is out of range: the model has {n_layers} layers "
                             f"(0..{n_layers - 1}).")
        n = sizes[layer]
        bad = [i for i in items if not 0 <= i < n]
        if bad:
            raise ValueError(f"Layer {layer}: {what} indices {bad} are out of range; this layer has {n} "
                             f"{what} (0..{n - 1}).")
        if len(set(items)) != len(items):
            dup = sorted({i for i in items if items.count(i) > 1})
            raise ValueError(f"Layer {layer}: duplicate {what} indices {dup}; list each one once.")
        if len(items) >= n:
            raise ValueError(f"Layer {layer}: removing {len(items)} of its {n} {what} would leave none; keep at "
                             f"least one (remove at most {n - 1}).")
        if items:
            out[layer] = sorted(items)
    return out


def _query_groups(removed: list[int], shape: AttentionShape, layer: int) -> None:
    """In 'query' mode every KV group must lose the same number r < G of query heads."""
    per_group = [sum(1 for h in removed if h // shape.group_size == g) for g in range(shape.n_kv_heads)]
    if len(set(per_group)) != 1 or per_group[0] >= shape.group_size:
        raise ValueError(
            f"Layer {layer}: with grouped-query attention every KV group must lose the same number of query heads, "
            f"and keep at least one. This layer has {shape.n_kv_heads} KV groups of {shape.group_size} query heads "
            f"(group g holds heads {shape.group_size}g..{shape.group_size}g+{shape.group_size - 1}); your indices "
            f"remove {per_group} per group. Remove r heads from each group, 1 <= r <= {shape.group_size - 1}, "
            f"or use mode='kv_group' to remove whole KV groups.")


def head_plan(model, heads: Mapping[int, Iterable[int]], mode: str) -> dict[int, tuple[list[int], list[int]]]:
    """{layer: (query heads to remove, KV heads to remove)}, validated for `mode`."""
    _check_mode(mode)
    layers = decoder_layers(model)
    shapes = [attention_shape(layer.self_attn) for layer in layers]
    if mode == "kv_group":
        spec = _indices(heads, len(layers), "KV heads", [s.n_kv_heads for s in shapes])
        plan = {}
        for i, kv in spec.items():
            g = shapes[i].group_size
            plan[i] = ([k * g + j for k in kv for j in range(g)], kv)
        return plan
    spec = _indices(heads, len(layers), "query heads", [s.n_heads for s in shapes])
    for i, q in spec.items():
        _query_groups(q, shapes[i], i)
    return {i: (q, []) for i, q in spec.items()}


# --- slicing -----------------------------------------------------------------------------------

def _rows(units: Iterable[int], size: int, device) -> torch.Tensor:
    """Row indices of whole units of `size` rows: unit u owns rows [u size, (u+1) size)."""
    units = torch.as_tensor(list(units), dtype=torch.long, device=device)
    return (units[:, None] * size + torch.arange(size, device=device)).reshape(-1)


def _kept(n: int, removed: Iterable[int]) -> list[int]:
    gone = set(removed)
    return [i for i in range(n) if i not in gone]


def _linear_like(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new nn.Linear holding copies of `weight` (out, in) and `bias`; no random init is run."""
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight.detach().clone(), requires_grad=old.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.detach().clone(), requires_grad=old.bias.requires_grad)
    return new


def keep_rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    """Keep output features `rows` (weight rows and bias entries)."""
    bias = None if linear.bias is None else linear.bias[rows]
    return _linear_like(linear, linear.weight[rows], bias)


def keep_columns(linear: nn.Linear, cols: torch.Tensor) -> nn.Linear:
    """Keep input features `cols`; the bias (one per output) is unchanged."""
    return _linear_like(linear, linear.weight[:, cols], linear.bias)


@torch.no_grad()
def prune_heads(model, heads: Mapping[int, Iterable[int]], *, mode: str = "kv_group"):
    """Remove attention heads for real; returns `model` (changed in place).

    mode "kv_group": `heads[layer]` lists KV heads; each goes with its G query heads.
    mode "query": `heads[layer]` lists query heads; KV heads stay, and every KV group must lose the
    same number of query heads, because transformers maps query head h to KV head h // G'
    with one G' per layer.
    """
    plan = head_plan(model, heads, mode)
    layers = decoder_layers(model)
    for i, (q_removed, kv_removed) in plan.items():
        attn = layers[i].self_attn
        s = attention_shape(attn)
        dev = attn.q_proj.weight.device
        q_rows = _rows(_kept(s.n_heads, q_removed), s.head_dim, dev)
        kv_rows = _rows(_kept(s.n_kv_heads, kv_removed), s.head_dim, dev)
        attn.q_proj = keep_rows(attn.q_proj, q_rows)
        attn.k_proj = keep_rows(attn.k_proj, kv_rows)
        attn.v_proj = keep_rows(attn.v_proj, kv_rows)
        attn.o_proj = keep_columns(attn.o_proj, q_rows)
        new = attention_shape(attn)
        attn.num_key_value_groups = new.n_heads // new.n_kv_heads  # G' read by repeat_kv in eager/SDPA
    return model


def _check_channels(model, channels: Mapping[int, Iterable[int]]) -> dict[int, list[int]]:
    return _indices(channels, len(decoder_layers(model)), "MLP channels", mlp_widths(model))


@torch.no_grad()
def prune_mlp_channels(model, channels: Mapping[int, Iterable[int]]):
    """Remove intermediate channels of the gated MLP (gate/up rows, down columns); returns `model`."""
    spec = _check_channels(model, channels)
    layers = decoder_layers(model)
    for i, removed in spec.items():
        mlp = layers[i].mlp
        keep = torch.tensor(_kept(mlp.gate_proj.out_features, removed), device=mlp.gate_proj.weight.device)
        mlp.gate_proj = keep_rows(mlp.gate_proj, keep)
        mlp.up_proj = keep_rows(mlp.up_proj, keep)
        mlp.down_proj = keep_columns(mlp.down_proj, keep)
        mlp.intermediate_size = len(keep)
    return model


# --- masking (the same removal without slicing) ------------------------------------------------

def _zero_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight[rows] = 0
    if linear.bias is not None:
        linear.bias[rows] = 0


@torch.no_grad()
def mask_heads(model, heads: Mapping[int, Iterable[int]], *, mode: str = "kv_group"):
    """Zero the coupled weights of the heads in place (shapes unchanged); returns `model`.

    A zeroed o_proj column block already silences a query head; its q rows (and bias) are zeroed
    too so that the masked and the sliced model hold the same non-zero weights.
    """
    plan = head_plan(model, heads, mode)
    layers = decoder_layers(model)
    for i, (q_removed, kv_removed) in plan.items():
        attn = layers[i].self_attn
        d, dev = attn.head_dim, attn.q_proj.weight.device
        q_rows, kv_rows = _rows(q_removed, d, dev), _rows(kv_removed, d, dev)
        _zero_rows(attn.q_proj, q_rows)
        attn.o_proj.weight[:, q_rows] = 0
        if len(kv_rows):
            _zero_rows(attn.k_proj, kv_rows)
            _zero_rows(attn.v_proj, kv_rows)
    return model


@torch.no_grad()
def mask_mlp_channels(model, channels: Mapping[int, Iterable[int]]):
    """Zero gate/up rows and down columns of the channels in place: act(gate) * 0 = 0; returns `model`."""
    spec = _check_channels(model, channels)
    layers = decoder_layers(model)
    for i, removed in spec.items():
        mlp = layers[i].mlp
        idx = torch.tensor(removed, device=mlp.gate_proj.weight.device)
        _zero_rows(mlp.gate_proj, idx)
        _zero_rows(mlp.up_proj, idx)
        mlp.down_proj.weight[:, idx] = 0
    return model
