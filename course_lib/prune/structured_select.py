"""Pick the least important heads / channels for a parameter budget, then slice them away.

    report = structured_prune(model, calib, target="both", ratio=0.2, importance="taylor")
    print_table(report.rows())      # units removed per layer; report.fraction_removed

Units compete by importance per parameter (``per_parameter``), so a KV group (98,304 weights in the
course model) and an MLP channel (768) are compared on the same footing, and so are layers:

    "global"     one ranking over all layers: layers end up with different widths
    "per_layer"  each layer gives up the same fraction of its own parameters

A unit is taken, lowest score first, when it still fits in the budget ratio * (block parameters),
so the result removes at most `ratio`, as close as the unit sizes allow; every layer keeps at least
one KV group, one query head per KV group and one MLP channel. In mode "query" a unit is one query
head from every KV group of a layer (the r-th least important of each), as GQA requires.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from ..lm.tokens import check_token_ids
from .structured import (MODES, attention_shape, block_params, count_params, decoder_layers, prune_heads,
                         prune_mlp_channels)
from .structured_scores import (HEAD_METHODS, MLP_METHODS, additive, element_maps,
                                head_importance, mlp_importance, per_parameter, unit_params)

TARGETS = ("heads", "mlp", "both")
SCOPES = ("global", "per_layer")


@dataclass(frozen=True)
class Unit:
    """One removable unit: KV head(s), query heads (one per group) or an MLP channel."""

    layer: int
    kind: str                   # "heads" or "mlp"
    indices: tuple[int, ...]    # what prune_heads / prune_mlp_channels get for this unit
    score: float                # importance per parameter
    params: int
    step: int | None = None     # mode "query": the r-th unit of its layer must come after the (r-1)-th


@dataclass
class StructuredReport:
    """What structured_prune removed: units per layer and parameter counts before and after."""

    target: str
    mode: str
    importance: str
    scope: str
    ratio: float
    heads: dict[int, list[int]] = field(default_factory=dict)     # KV heads (kv_group) or query heads (query)
    channels: dict[int, list[int]] = field(default_factory=dict)
    layer_params_before: list[int] = field(default_factory=list)
    layer_params_after: list[int] = field(default_factory=list)
    total_params_before: int = 0
    total_params_after: int = 0

    @property
    def block_params_before(self) -> int:
        return sum(self.layer_params_before)

    @property
    def block_params_after(self) -> int:
        return sum(self.layer_params_after)

    @property
    def fraction_removed(self) -> float:
        """Share of the decoder-block parameters removed."""
        return 1 - self.block_params_after / self.block_params_before

    def summary(self) -> dict:
        """One table row: what was asked, what was removed (of the blocks and of the whole model)."""
        return {"target": self.target, "mode": self.mode, "importance": self.importance, "scope": self.scope,
                "ratio asked": self.ratio, "blocks removed": self.fraction_removed,
                "model removed": 1 - self.total_params_after / self.total_params_before,
                "params after": self.total_params_after}

    def rows(self) -> list[dict]:
        """One row per layer: units removed and the layer's parameter share removed."""
        head_col = "KV heads removed" if self.mode == "kv_group" else "query heads removed"
        return [{"layer": i, head_col: len(self.heads.get(i, [])),
                 "MLP channels removed": len(self.channels.get(i, [])),
                 "params removed": b - a, "fraction": (b - a) / b}
                for i, (b, a) in enumerate(zip(self.layer_params_before, self.layer_params_after))]


def head_units(model, scores: torch.Tensor, mode: str, importance: str) -> list[Unit]:
    """Units for heads; `scores` per KV group (mode kv_group) or per query head (mode query)."""
    units = []
    sizes_q, sizes_kv = unit_params(model, "query"), unit_params(model, "kv_group")
    for i, layer in enumerate(decoder_layers(model)):
        s = attention_shape(layer.self_attn)
        if mode == "kv_group":
            score = per_parameter(scores[i], importance, sizes_kv[i])
            units += [Unit(i, "heads", (g,), score[g].item(), sizes_kv[i]) for g in range(s.n_kv_heads)]
            continue
        group, add = s.group_size, additive(scores[i], importance)
        order = [sorted(range(g * group, (g + 1) * group), key=lambda h: (add[h].item(), h))
                 for g in range(s.n_kv_heads)]
        for r in range(group - 1):  # the last query head of each group stays
            heads = tuple(sorted(o[r] for o in order))
            params = sizes_q[i] * s.n_kv_heads
            units.append(Unit(i, "heads", heads, (add[list(heads)].sum() / params).item(), params, step=r))
    return units


def mlp_units(model, scores: torch.Tensor, importance: str) -> list[Unit]:
    units = []
    for i, (layer, size) in enumerate(zip(decoder_layers(model), unit_params(model, "mlp"))):
        score = per_parameter(scores[i], importance, size)
        units += [Unit(i, "mlp", (c,), score[c].item(), size) for c in range(layer.mlp.gate_proj.out_features)]
    return units


def _limits(model, mode: str) -> dict[tuple[int, str], int]:
    """Most units per (layer, kind): keep one KV group (or one query head per group) and one channel."""
    out = {}
    for i, layer in enumerate(decoder_layers(model)):
        s = attention_shape(layer.self_attn)
        out[(i, "heads")] = s.n_kv_heads - 1 if mode == "kv_group" else s.group_size - 1
        out[(i, "mlp")] = layer.mlp.gate_proj.out_features - 1
    return out


def select(units: list[Unit], budget: float, limits: dict[tuple[int, str], int]) -> list[Unit]:
    """Greedy: lowest score first, take a unit if it fits the budget and its layer's limit."""
    taken, removed, count = [], 0, defaultdict(int)
    for u in sorted(units, key=lambda u: (u.score, u.layer, u.kind, u.step or 0, u.indices)):
        key = (u.layer, u.kind)
        if removed + u.params > budget or count[key] >= limits[key]:
            continue
        if u.step is not None and u.step != count[key]:
            continue
        taken.append(u)
        removed += u.params
        count[key] += 1
    return taken


def _max_removable(units: list[Unit], limits: dict[tuple[int, str], int], layer: int | None = None) -> int:
    """Parameters removable if every allowed unit went (units of one (layer, kind) have one size)."""
    sizes = {(u.layer, u.kind): u.params for u in units if layer is None or u.layer == layer}
    return sum(size * limits[key] for key, size in sizes.items())


def _check_args(target: str, ratio: float, importance: str, scope: str, mode: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {target!r}.")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio is the share of decoder-block parameters to remove and must be in [0, 1); "
                         f"got {ratio!r}.")
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'global' or 'per_layer'; got {scope!r}.")
    if mode not in MODES:
        raise ValueError(f"mode must be 'kv_group' or 'query'; got {mode!r}.")
    allowed = {"heads": HEAD_METHODS, "mlp": MLP_METHODS, "both": ("taylor", "magnitude")}[target]
    if importance not in allowed:
        raise ValueError(f"importance for target={target!r} must be one of {', '.join(allowed)}; got {importance!r}.")


def structured_prune(model, calibration=None, *, target: str = "both", ratio: float = 0.2, importance: str = "taylor",
                     scope: str = "global", mode: str = "kv_group", batch_size: int = 8) -> StructuredReport:
    """Remove about `ratio` of the decoder-block parameters, least important units first; returns a StructuredReport.

    Raises ValueError if the target can't reach `ratio` (heads are 1/4 of a course-model block).
    """
    _check_args(target, ratio, importance, scope, mode)
    if calibration is not None or importance != "magnitude":
        if calibration is None:
            raise ValueError(f"importance={importance!r} needs calibration token ids (n_samples, seq_len).")
        calibration = check_token_ids(calibration)
    layers = decoder_layers(model)
    report = StructuredReport(target, mode, importance, scope, float(ratio),
                         layer_params_before=[count_params(layer) for layer in layers],
                         total_params_before=count_params(model))
    maps = None
    if importance in ("taylor", "magnitude"):
        maps = element_maps(model, importance, calibration, batch_size=batch_size)  # one backward for heads and MLP
    units: list[Unit] = []
    if target in ("heads", "both"):
        scores = head_importance(model, calibration, method=importance, batch_size=batch_size, maps=maps,
                                 level="kv_group" if mode == "kv_group" else "query")
        units += head_units(model, scores, mode, importance)
    if target in ("mlp", "both"):
        units += mlp_units(model, mlp_importance(model, calibration, method=importance, batch_size=batch_size,
                                                 maps=maps), importance)
    limits = _limits(model, mode)
    if scope == "global":
        budget = ratio * block_params(model)
        if budget > _max_removable(units, limits):
            raise ValueError(f"target={target!r} (mode={mode!r}) can remove at most "
                             f"{_max_removable(units, limits) / block_params(model):.1%} of the decoder-block "
                             f"parameters while keeping one unit per layer; asked for {ratio:.1%}. Lower ratio "
                             "or prune target='both'.")
        taken = select(units, budget, limits)
    else:
        taken = []
        for i, before in enumerate(report.layer_params_before):
            if ratio * before > _max_removable(units, limits, i):
                raise ValueError(f"target={target!r} (mode={mode!r}) can remove at most "
                                 f"{_max_removable(units, limits, i) / before:.1%} of layer {i}'s parameters; "
                                 f"asked for {ratio:.1%}. Lower ratio or prune target='both'.")
            taken += select([u for u in units if u.layer == i], ratio * before, limits)
    for u in taken:
        into = report.heads if u.kind == "heads" else report.channels
        into.setdefault(u.layer, []).extend(u.indices)
    report.heads = {i: sorted(v) for i, v in sorted(report.heads.items())}
    report.channels = {i: sorted(v) for i, v in sorted(report.channels.items())}
    prune_heads(model, report.heads, mode=mode)
    prune_mlp_channels(model, report.channels)
    report.layer_params_after = [count_params(layer) for layer in layers]
    report.total_params_after = count_params(model)
    return report


# --- seed 003 §6.3.2 ---------------------------------------------------------------------------

def seed_llm_pruner(model, target_sparsity=0.2, *, compute_neuron_importance, identify_dependency_groups,
                    prune_group, apply_lora_to_pruned_model):
    """Seed 003 §6.3.2's ``llm_pruner``, line for line; the seed never defines its four helpers, so they
    are passed in (``seed_llm_pruner_helpers`` builds them from course_lib).

    ``threshold`` is defined nowhere: the call raises NameError at the first group, after the
    importance is computed. ``target_sparsity``, the one number the caller chooses, is never read.
    """
    # 1. importance of every neuron
    importance_scores = compute_neuron_importance(model)
    # 2. dependency groups
    groups = identify_dependency_groups(model)
    # 3. group-level pruning
    for group in groups:
        group_importance = sum(importance_scores[neuron] for neuron in group)
        if group_importance < threshold:  # noqa: F821 -- undefined in the seed; kept to show it
            prune_group(model, group)
    # 4. quick recovery training (LoRA)
    apply_lora_to_pruned_model(model)
    return model


def seed_llm_pruner_helpers(model, calibration, tokenizer) -> dict:
    """The seed's four helpers from course_lib: Taylor importance of every MLP channel (a neuron is
    (layer, channel)), one dependency group per channel (its gate and up rows, its down column),
    removal of the groups marked by prune_group, then a short LoRA recovery (``recover``)."""
    from .recover import recover

    scores = mlp_importance(model, calibration, method="taylor").tolist()
    marked: dict[int, list[int]] = defaultdict(list)

    def remove_marked_and_recover(m) -> None:
        prune_mlp_channels(m, dict(marked))  # all at once: removing one channel renumbers the rest
        recover(m, tokenizer, steps=40, batch_size=4, lora_rank=8)

    return {
        "compute_neuron_importance": lambda m: {(i, c): s for i, row in enumerate(scores) for c, s in enumerate(row)},
        "identify_dependency_groups": lambda m: [[(i, c)] for i, row in enumerate(scores) for c in range(len(row))],
        "prune_group": lambda m, group: [marked[i].append(c) for i, c in group],
        "apply_lora_to_pruned_model": remove_marked_and_recover,
    }
