"""GPTQ over a whole decoder-only model, block by block (the paper's "sequential" pipeline).

    calib = course_lib.lm.tokens.calibration_batches(tok, 128, 256)    # LongTensor (n, seq)
    report = gptq_quantize_model(model, calib, bits=4, group_size=128)
    print_table(report.rows())

1. Run the model on the calibration tokens until decoder block 0 and record its inputs: the
   hidden states and the keyword arguments the block needs (attention mask, rotary (cos, sin),
   position ids, ...), one entry per calibration batch.
2. For each block, in order: for each group of linear layers (true-sequential: [q, k, v], then
   [o], then [gate, up], then [down]), run the block on the recorded inputs with hooks that
   accumulate every group member's Hessian H = 2/n sum x x^T (stopping the forward as soon as the
   group's inputs are recorded, before the layers themselves run), quantize the group with GPTQ and
   write the dequantized weights in; the next group's inputs therefore come from the
   already-quantized earlier groups.
3. Run the quantized block on its inputs: its outputs are the next block's inputs, so every block
   is calibrated on what the quantized model before it really produces.

Only one block's activations are held at a time. The model ends up "fake-quantized" (float
weights holding the dequantized GPTQ values, as quantize_model_rtn does); report.results keeps each
layer's codes, scales, zeros and g_idx for QuantLinear and save_gptq_checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..lm.blocks import (StopForward, block_progress, check_calibration, find_blocks, first_block_inputs, run_block,
                        to_device)
from .core import GPTQResult, check_gptq_args, gptq_quantize_weight
from .hessian import HessianAccumulator

@dataclass
class GPTQReport:
    """What gptq_quantize_model did. layers: one dict per quantized layer
    {"name", "shape" (out, in), "loss" (GPTQResult.loss), "damp", "seconds"}; results: name -> GPTQResult."""

    model: nn.Module
    bits: int
    group_size: int | None
    symmetric: bool
    act_order: bool
    static_groups: bool
    true_sequential: bool
    percdamp: float
    n_samples: int
    seq_len: int
    layers: list[dict] = field(default_factory=list)
    results: dict[str, GPTQResult] = field(default_factory=dict)
    seconds: float = 0.0

    def rows(self) -> list[dict]:
        """One row per layer for print_table: layer, shape (out x in), loss."""
        return [{"layer": d["name"], "shape": "x".join(map(str, d["shape"])), "loss": d["loss"]} for d in self.layers]

    @property
    def total_loss(self) -> float:
        return sum(d["loss"] for d in self.layers)


class _FinalOutputs:
    """Outputs of submodules whose weights are final, recorded once and replayed in later passes.

    Inside one block the recorded inputs never change, so once every quantized layer of a submodule
    is done (self_attn after q, k, v and o), the submodule returns the same thing in every later
    pass over the block. The first pass that runs it records its output per batch; the passes
    after that return the record instead of recomputing it. The numbers are identical and
    true-sequential GPTQ then runs about as many matmuls as the one-pass variant; the price is
    one output (a hidden-state tensor) per calibration batch.
    """

    def __init__(self, block: nn.Module, layer_names: list[str], n_batches: int):
        self.block = block
        self.pending: dict[str, set[str]] = {}  # submodule -> its layers not quantized yet
        for name in layer_names:
            parent = name.rpartition(".")[0]
            if parent:  # a layer directly in the block (OPT's fc1) has no submodule to replay
                self.pending.setdefault(parent, set()).add(name)
        self.outputs: dict[str, dict[int, object]] = {stage: {} for stage in self.pending}
        self.n_batches = n_batches
        self.batch = 0  # set by the pass loops before each forward

    def quantized(self, names: list[str]) -> None:
        for layers in self.pending.values():
            layers.difference_update(names)

    @contextlib.contextmanager
    def active(self):
        """Inside: final submodules either record their output (first time) or replay it."""
        undo = []
        for stage, layers in self.pending.items():
            if layers:
                continue
            module, record = self.block.get_submodule(stage), self.outputs[stage]
            if len(record) == self.n_batches:
                module.forward = lambda *args, record=record, **kwargs: record[self.batch]
                undo.append(lambda module=module: delattr(module, "forward"))
            else:
                hook = module.register_forward_hook(
                    lambda mod, args, out, record=record: record.update({self.batch: out}))
                undo.append(hook.remove)
        try:
            yield
        finally:
            for fn in undo:
                fn()


def _group_hessians(block: nn.Module, names: list[str], inputs: list[tuple[torch.Tensor, dict]],
                    cache: _FinalOutputs | None = None, what: str = "GPTQ") -> dict:
    """Hessian of each layer in `names` over all inputs, recorded by forward *pre*-hooks.

    Layers that read the very same input tensor (q, k, v; gate, up) share one accumulator. The
    first batch runs until every layer of the group has received its input, which shows who shares
    with whom; later batches stop as soon as each distinct input has been seen (for [q, k, v]:
    before q's own matmul), so no linear layer runs whose output nobody needs.
    """
    accs = {n: HessianAccumulator(block.get_submodule(n).in_features, device=inputs[0][0].device) for n in names}
    owner: dict[str, str] = {}               # layer -> layer whose accumulator holds its H
    seen: list[tuple[torch.Tensor, str]] = []  # (input tensor, layer) of this forward pass
    needed = set(names)                      # pre-hooks that must fire before a forward may stop

    def make_hook(name):
        def pre_hook(module, args):
            if name not in needed:
                return
            x = args[0]
            first = next((n for t, n in seen if t is x), None)
            if first is None:
                accs[name].add_batch(x)
            if owner.setdefault(name, first or name) != (first or name):
                raise RuntimeError(f"{what}: layer {name} changed which layer's input it shares between batches.")
            seen.append((x, name))
            if len(seen) == len(needed):
                raise StopForward
        return pre_hook

    handles = [block.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in names]
    try:
        with cache.active() if cache else contextlib.nullcontext():
            for i, (hidden, kwargs) in enumerate(inputs):
                if cache:
                    cache.batch = i
                seen.clear()
                try:
                    block(hidden, **kwargs)
                except StopForward:
                    pass
                needed = set(owner.values())     # after the first batch: one layer per distinct input
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in owner]
    if missing:
        raise RuntimeError(f"{what}: {missing} received no input in the block's forward pass; process only layers "
                           f"the forward pass uses (pass them in `skip`).")
    return {n: accs[owner[n]].H for n in names}


@dataclass
class LayerJob:
    """One layer handed out by sequential_layers: its full name, the module, its Hessian H = 2/n sum x x^T
    over the calibration inputs it sees now, and the device its block lives on outside the pipeline."""

    name: str
    layer: nn.Module
    H: torch.Tensor
    home: torch.device


def layer_groups(model: nn.Module, skip: tuple[str, ...] = ("lm_head",), true_sequential: bool = True,
                 what: str = "GPTQ") -> tuple[str, nn.ModuleList, list[list[str]]]:
    """(path, blocks, groups) with the names ending in `skip` removed; one group if not true_sequential."""
    path, blocks, groups = find_blocks(model, what)
    groups = [[n for n in grp if not n.endswith(tuple(skip))] for grp in groups]
    groups = [grp for grp in groups if grp]
    return path, blocks, (groups if true_sequential else [sum(groups, [])])


@torch.no_grad()
def sequential_layers(model: nn.Module, calibration: torch.Tensor, groups: list[list[str]], *,
                      reuse_outputs: bool = True, batch_size: int = 16, device: torch.device | str | None = None,
                      progress: bool = True, desc: str = "GPTQ blocks", what: str = "GPTQ"):
    """The sequential pipeline of the module docstring as a generator: yields a LayerJob per layer, in
    block and group order. The caller writes the layer's new weights before asking for the next job;
    the next group's Hessians and the next block's inputs then come from the modified layers.
    GPTQ (below) and course_lib.prune's SparseGPT and Wanda both run on it."""
    path, blocks, _ = find_blocks(model, what)
    check_calibration(model, calibration)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (calibration samples per forward), got {batch_size!r}.")
    was_training = model.training
    model.eval()
    try:
        inputs = first_block_inputs(model, blocks[0], calibration, batch_size)
        for i, block in enumerate(block_progress(blocks, desc, progress)):
            home = next(block.parameters()).device
            if device is not None:
                block.to(device)
                inputs = [(h.to(device), to_device(kw, device)) for h, kw in inputs]
            cache = _FinalOutputs(block, sum(groups, []), len(inputs)) if reuse_outputs else None
            for names in groups:
                hessians = _group_hessians(block, names, inputs, cache, what)
                for name in names:
                    yield LayerJob(f"{path}.{i}.{name}", block.get_submodule(name), hessians.pop(name), home)
                if cache:
                    cache.quantized(names)
            outputs = run_block(block, inputs, cache)  # the modified block's outputs feed the next block
            inputs = [(h, kw) for h, (_, kw) in zip(outputs, inputs)]
            if device is not None:
                block.to(home)
    finally:
        model.train(was_training)


@torch.no_grad()
def gptq_quantize_model(model: nn.Module, calibration: torch.Tensor, bits: int = 4, *, group_size: int | None = 128,
                        symmetric: bool = True, act_order: bool = False, static_groups: bool = False,
                        percdamp: float = 0.01, blocksize: int = 128, true_sequential: bool = True,
                        reuse_outputs: bool = True, skip: tuple[str, ...] = ("lm_head",), progress: bool = True,
                        batch_size: int = 16,
                        device: torch.device | str | None = None,
                        scale_dtype: torch.dtype = torch.float16, restricted: bool = False) -> GPTQReport:
    """Quantize every nn.Linear in the decoder blocks (names not ending in `skip`) with GPTQ, in place.

    calibration: LongTensor (n_samples, seq_len) of token ids on the model's device.
    reuse_outputs: record the output of a submodule whose layers are all quantized (self_attn after o)
      and reuse it in the block's later passes instead of recomputing it: same result, fewer matmuls,
      one extra hidden-state tensor per calibration batch (see _FinalOutputs).
    progress: a tqdm bar over the blocks on stderr (TQDM_DISABLE=1 turns it off too).
    device: where each block is quantized (moved there and back); default: where the block is.
    scale_dtype: float16 (default) rounds scales to what a GPTQ checkpoint stores, so that the
      fake-quantized model and the exported one compute with the same weights.
    restricted: the restricted symmetric grid instead of GPTQ's (gptq_quantize_weight), for comparisons with RTN.
    Everything is checked (architecture, layer types, group sizes, calibration) before any weight changes.
    """
    path, blocks, groups = layer_groups(model, skip, true_sequential)
    for i, block in enumerate(blocks):
        for name in sum(groups, []):
            check_gptq_args(block.get_submodule(name).in_features, bits, group_size, blocksize, f"{path}.{i}.{name}")
    check_calibration(model, calibration)

    t0 = time.perf_counter()
    report = GPTQReport(model=model, bits=bits, group_size=None if group_size in (None, -1) else group_size,
                        symmetric=symmetric, act_order=act_order, static_groups=static_groups,
                        true_sequential=true_sequential, percdamp=percdamp, n_samples=calibration.shape[0],
                        seq_len=calibration.shape[1])
    for job in sequential_layers(model, calibration, groups, reuse_outputs=reuse_outputs, batch_size=batch_size,
                                 device=device, progress=progress, desc="GPTQ blocks"):
        t = time.perf_counter()
        res = gptq_quantize_weight(job.layer.weight, job.H, bits, group_size=group_size, symmetric=symmetric,
                                   act_order=act_order, static_groups=static_groups, blocksize=blocksize,
                                   percdamp=percdamp, scale_dtype=scale_dtype, restricted=restricted,
                                   name=job.name)
        job.layer.weight.copy_(res.qweight_float)
        report.results[job.name] = res if device is None else res.to(job.home)
        report.layers.append({"name": job.name, "shape": tuple(job.layer.weight.shape), "loss": res.loss,
                              "damp": res.damp, "seconds": time.perf_counter() - t})
    report.seconds = time.perf_counter() - t0
    return report
