"""AWQ over a whole decoder-only model, block by block, with no error propagation.

    report = awq_quantize_model(model, calibration_batches(tok, 128, 256), bits=4, group_size=128)

For each block: run the *float* block on its float inputs once, recording what every scale group's
inspected module receives (and the block's outputs, which are the next block's inputs); then, group
by group, search the scales (core.search_scales), fold the best ones into the model (the float
function is unchanged), search each layer's clipping range on sampled inputs (core.search_clip; not
q and k), and finally round every linear layer of the block to the grid (RTN on the scaled, clipped
weights). Unlike GPTQ, whose blocks are calibrated on what the already-quantized blocks
before them produce, every AWQ block sees float inputs: its search only needs activation statistics
and a float reference output, and the paper finds that enough.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..lm.blocks import block_progress, check_calibration, find_blocks, first_block_inputs, run_block
from ..quant.affine import QTensor, check_args, dequantize, quantize
from .core import (N_GRID, ScaleGroup, ScaleSearch, apply_clip, architecture_groups, fold_scales, scale_groups,
                   search_clip, search_scales)

NO_CLIP = ("q_proj", "k_proj")  # their product forms the attention scores: AWQ leaves their range alone


@dataclass
class AWQReport:
    """What awq_quantize_model did. groups: one row per scale group {"block", "prev", "layers", "ratio",
    "loss_rtn", "loss_awq"}; searches: "<block>.<prev>" -> ScaleSearch."""

    model: nn.Module
    bits: int
    group_size: int | None
    symmetric: bool
    duo: bool
    n_grid: int
    groups: list[dict] = field(default_factory=list)
    searches: dict[str, ScaleSearch] = field(default_factory=dict)
    quantized: list[str] = field(default_factory=list)
    clipped: list[str] = field(default_factory=list)
    codes: dict[str, QTensor] = field(default_factory=dict, repr=False)  # layer -> its codes, scales, zero points
    seconds: float = 0.0


def _record_inspect_inputs(block: nn.Module, groups: list[ScaleGroup], inputs) -> tuple[dict, list[torch.Tensor]]:
    """Run the block on each recorded input; return {inspect name: [(args, kwargs) per batch]} and the outputs."""
    seen: dict[str, list] = {g.inspect: [] for g in groups}

    def make(name):
        def pre_hook(module, args, kwargs):
            seen[name].append((args, dict(kwargs)))
        return pre_hook

    handles = [block.get_submodule(n).register_forward_pre_hook(make(n), with_kwargs=True) for n in seen]
    try:
        outs = run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    return seen, outs


def _sample_linear_inputs(block: nn.Module, names: list[str], inputs, n_tokens: int) -> dict[str, torch.Tensor]:
    """Inputs of the named linear layers when the block runs on `inputs`: up to n_tokens evenly spaced tokens."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [block.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: seen[n].append(args[0].reshape(-1, args[0].shape[-1]))) for n in names]
    try:
        run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, xs in seen.items():
        x = torch.cat(xs)
        out[n] = x[torch.linspace(0, x.shape[0] - 1, min(n_tokens, x.shape[0]), device=x.device).long()]
    return out


def _run(module: nn.Module, recorded) -> torch.Tensor:
    """The module's output (a tuple's first element) on every recorded (args, kwargs), concatenated."""
    outs = []
    for args, kwargs in recorded:
        out = module(*args, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return torch.cat(outs)


@torch.no_grad()
def awq_quantize_model(model: nn.Module, calibration: torch.Tensor, bits: int = 4, *, group_size: int | None = 128,
                       symmetric: bool = False, n_grid: int = N_GRID, duo: bool = False, clip: bool = True,
                       clip_tokens: int = 512, batch_size: int = 16, skip: tuple[str, ...] = ("lm_head",),
                       scale_dtype: torch.dtype = torch.float16, progress: bool = True) -> AWQReport:
    """AWQ-scale, then round-to-nearest, every nn.Linear of the decoder blocks, in place (fake-quantized).

    calibration: LongTensor (n_samples, seq_len) of token ids on the model's device.
    symmetric=False (a zero point per group) is AWQ's usual setting. Layers are checked before any change.
    clip: after the scales, search each layer's clipping range (core.search_clip) on up to clip_tokens
      sampled inputs, except q_proj and k_proj.
    scale_dtype: the grid scales are rounded to it before the weights are rounded, so that the model
      computes exactly what an AWQ checkpoint (float16 scales) stores; report.codes keeps the codes.
    """
    architecture_groups(model)  # an unknown architecture fails here, naming the mapping to provide
    path, blocks, _ = find_blocks(model)
    per_block = [scale_groups(model, block) for block in blocks]
    linears = [[n for n, m in block.named_modules() if isinstance(m, nn.Linear) and not n.endswith(tuple(skip))]
               for block in blocks]
    for i, block in enumerate(blocks):
        for name in linears[i]:
            try:
                check_args(block.get_submodule(name).weight, bits, "group" if group_size else "channel", group_size)
            except ValueError as exc:
                raise ValueError(f"AWQ: layer {path}.{i}.{name}: {exc}") from None
    check_calibration(model, calibration)
    if not isinstance(n_grid, int) or isinstance(n_grid, bool) or n_grid < 1:
        raise ValueError(f"n_grid must be a positive int (ratios tried: 0, 1/n_grid, ...), got {n_grid!r}.")

    t0 = time.perf_counter()
    report = AWQReport(model=model, bits=bits, group_size=group_size, symmetric=symmetric, duo=duo, n_grid=n_grid)
    was_training = model.training
    model.eval()
    try:
        inputs = first_block_inputs(model, blocks[0], calibration, batch_size)
        for i, block in enumerate(block_progress(blocks, "AWQ blocks", progress)):
            recorded, outputs = _record_inspect_inputs(block, per_block[i], inputs)
            for g in per_block[i]:
                inspect = block.get_submodule(g.inspect)
                layers = [block.get_submodule(n) for n in g.layers if not n.endswith(tuple(skip))]
                if not layers:
                    continue
                x = torch.cat([args[0] if args else kw["hidden_states"] for args, kw in recorded[g.inspect]])
                out_fp = _run(inspect, recorded[g.inspect])
                search = search_scales(layers, x, lambda: _run(inspect, recorded[g.inspect]), out_fp, bits,
                                       group_size=group_size, symmetric=symmetric, n_grid=n_grid, duo=duo)
                fold_scales(block.get_submodule(g.prev), layers, search.scales)
                key = f"{path}.{i}.{g.prev}"
                report.searches[key] = search
                report.groups.append({"block": i, "prev": g.prev, "layers": ", ".join(g.layers),
                                      "ratio": search.best_ratio, "loss_rtn": search.loss_rtn,
                                      "loss_awq": search.best_loss})
            if clip:
                names = [n for n in linears[i] if not n.endswith(NO_CLIP)]
                samples = _sample_linear_inputs(block, names, inputs, clip_tokens)  # inputs of the scaled model
                for name in names:
                    w = block.get_submodule(name).weight
                    apply_clip(w, search_clip(w, samples[name], bits, group_size=group_size, symmetric=symmetric,
                                              n_grid=n_grid))
                    report.clipped.append(f"{path}.{i}.{name}")
            for name in linears[i]:
                w = block.get_submodule(name).weight
                qt = quantize(w, bits, symmetric=symmetric, granularity="group" if group_size else "channel",
                              group_size=group_size)
                qt.scale = qt.scale.to(scale_dtype).float()  # what a checkpoint stores (float16 for AWQ)
                w.copy_(dequantize(qt))
                report.quantized.append(f"{path}.{i}.{name}")
                report.codes[f"{path}.{i}.{name}"] = qt
            inputs = [(h, kw) for h, (_, kw) in zip(outputs, inputs)]  # float outputs: no error propagation
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - t0
    return report
