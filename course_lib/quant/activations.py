"""Activation ranges of a model's linear layers, measured with forward hooks on calibration data.

    stats = activation_stats(model, calibration_batches(tok, 8, 256))
    print_table(range_rows(stats, model))

A forward *pre*-hook on an nn.Linear sees the layer's input x before the matmul: the activation that a
W8A8 kernel would have to quantize. Per layer we keep

    absmax          max |x| over every token and channel seen
    median          median |x| (mean of the per-chunk medians when the batches go through in chunks)
    channel_absmax  max |x| per input channel, a tensor (in_features,)
    window_absmax   max |x| per calibration window (how much the range moves with the input)

and the same abs-max / median statistics for the layer's weight, for comparison.

How many bytes activations take, next to the weights and the KV cache (seed 004 calls activations
"usually the bulk of memory"):

    memory_split(load_config("Llama-2-7b-hf"), batch=16, seq_len=4096)   # weights, KV cache, activations
    saved_activation_bytes(model, input_ids)    # what a training step keeps for backward, measured
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ActStats:
    """Running statistics of one linear layer's input."""

    absmax: float = 0.0
    medians: list[float] = field(default_factory=list)
    channel_absmax: torch.Tensor | None = None
    window_absmax: list[float] = field(default_factory=list)
    tokens: int = 0

    @property
    def median(self) -> float:
        return sum(self.medians) / len(self.medians)

    @property
    def ratio(self) -> float:
        """max |x| / median |x|: how far the largest value sits from a typical one."""
        return self.absmax / self.median if self.median > 0 else float("inf")

    @property
    def channel_ratio(self) -> float:
        """largest per-channel abs-max / median per-channel abs-max: one channel standing out."""
        c = self.channel_absmax
        return (c.max() / c.median()).item() if c.median() > 0 else float("inf")

    def update(self, x: torch.Tensor) -> None:
        """Fold one input (batch, seq, in) or (tokens, in) into the statistics."""
        x = x.detach().float()
        a = x.abs().reshape(-1, x.shape[-1])
        self.absmax = max(self.absmax, a.max().item())
        self.medians.append(a.median().item())
        per_channel = a.amax(dim=0).cpu()
        self.channel_absmax = per_channel if self.channel_absmax is None else torch.maximum(self.channel_absmax, per_channel)
        windows = x.abs().reshape(x.shape[0], -1).amax(dim=1) if x.dim() == 3 else a.max()[None]
        self.window_absmax += windows.cpu().tolist()
        self.tokens += a.shape[0]


def activation_stats(model: nn.Module, batches: torch.Tensor, *, batch_size: int = 8,
                     skip: tuple[str, ...] = ("lm_head",)) -> dict[str, ActStats]:
    """Run `batches` (LongTensor (n, seq_len) of token ids) through `model` with a forward pre-hook on
    every linear layer; return each layer's input statistics, by name, in the model's order."""
    from ..lm.models import linear_layers

    if not isinstance(batches, torch.Tensor) or batches.dim() != 2 or batches.is_floating_point():
        raise TypeError("batches must be a LongTensor (n_samples, seq_len) of token ids, e.g. "
                        "course_lib.lm.tokens.calibration_batches(tokenizer, 8, 256).")
    layers = linear_layers(model, skip=skip)
    stats = {name: ActStats() for name in layers}

    def hook_for(name: str):
        def hook(module, args):
            stats[name].update(args[0])
        return hook

    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in layers.items()]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for i in range(0, len(batches), batch_size):
                model(input_ids=batches[i : i + batch_size].to(device))
    finally:
        for h in handles:  # never leave hooks behind on the caller's model
            h.remove()
    return stats


def weight_ratios(w: torch.Tensor) -> dict[str, float]:
    """The same statistics for a weight matrix (out, in): max |w| / median |w| and the per-input-column version."""
    a = w.detach().float().abs()
    col = a.amax(dim=0)
    return {"absmax": a.max().item(), "median": a.median().item(), "ratio": (a.max() / a.median()).item(),
            "channel_ratio": (col.max() / col.median()).item()}


def range_rows(stats: dict[str, ActStats], model: nn.Module) -> list[dict]:
    """One row per layer: activation abs-max, median, max/median and channel ratio next to the weight's."""
    from ..lm.models import linear_layers, weight_matrix

    layers = linear_layers(model, skip=())
    rows = []
    for name, s in stats.items():
        w = weight_ratios(weight_matrix(layers[name]))
        rows.append({"layer": name, "act max": s.absmax, "act median": s.median, "act max/median": s.ratio,
                     "act channel ratio": s.channel_ratio, "weight max/median": w["ratio"],
                     "weight channel ratio": w["channel_ratio"]})
    return rows


def by_layer_kind(rows: list[dict], columns: tuple[str, ...] = ("act max/median", "weight max/median")) -> list[dict]:
    """Summarise range_rows by projection kind (q_proj, ..., down_proj): min and max of each column."""
    kinds: dict[str, list[dict]] = {}
    for row in rows:
        kinds.setdefault(row["layer"].rsplit(".", 1)[-1], []).append(row)
    out = []
    for kind, group in kinds.items():
        summary: dict = {"kind": kind, "layers": len(group)}
        for c in columns:
            values = [r[c] for r in group]
            summary[f"{c} min"], summary[f"{c} max"] = min(values), max(values)
        out.append(summary)
    return out


def capture_inputs(model: nn.Module, names: list[str], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input tensors of the named linear layers for one forward pass (for quantizing them directly)."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(
            lambda mod, args, name=name: captured.__setitem__(name, args[0].detach().clone())))
    try:
        with torch.no_grad():
            model(input_ids=input_ids.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in captured]
    if missing:
        raise ValueError(f"These layers were never called in the forward pass: {missing}.")
    return captured


# --- Activation memory, next to the weights and the KV cache ---------------------------------------

def memory_split(cfg: dict, *, batch: int, seq_len: int, bytes_per_element: float = 2.0) -> dict:
    """Bytes of a decoder-only model's weights, KV cache and inference activations for `batch` sequences of
    `seq_len` tokens, all at `bytes_per_element` (2: fp16/bf16). `cfg` is a config.json dict.

    weights           parameter_count(cfg) x bytes                (course_lib.kv.sizes, exact)
    KV cache          kv_cache_bytes(cfg, batch, seq_len, bytes)  (course_lib.kv.sizes: 2 x layers x kv_heads x
                      head_dim x tokens)
    activations       the tensors alive at once at the peak of one decoder layer, batch x tokens x (2h + 3i):
                      the residual stream and its normed copy (h each), the MLP's up projection, activated gate
                      and their product (i each). Inference frees a layer's activations before the next layer
                      runs, so this is the whole peak; with a fused attention kernel (SDPA flash, chapter 10) the
                      attention scores are never stored. `prefill` counts all seq_len tokens of a prompt at
                      once, `decode step` one new token per sequence.
    """
    from ..kv.sizes import kv_cache_bytes, parameter_count

    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    per_token = (2 * h + 3 * i) * bytes_per_element
    return {"weights B": parameter_count(cfg) * bytes_per_element,
            "KV cache B": kv_cache_bytes(cfg, batch=batch, seq_len=seq_len, bytes_per_element=bytes_per_element),
            "activations, prefill B": batch * seq_len * per_token,
            "activations, decode step B": batch * per_token}


def saved_activation_bytes(model: nn.Module, input_ids: torch.Tensor) -> int:
    """Bytes of the tensors that autograd keeps for the backward pass of one training forward (next-token
    loss on `input_ids`), parameters excluded: the activations a training step must hold. Measured with
    torch.autograd.graph.saved_tensors_hooks, each storage counted once."""
    storages: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    was_training = model.training
    model.eval()  # dropout off: the same tensors, deterministically
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            ids = input_ids.to(next(model.parameters()).device)
            model(input_ids=ids, labels=ids)
    finally:
        model.train(was_training)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)
