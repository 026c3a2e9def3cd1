"""Prune every linear layer of a decoder-only model: magnitude, Wanda or SparseGPT, unstructured or N:M.

    calib = course_lib.lm.tokens.calibration_batches(tok, 128, 256)
    report = prune_model(model, calib, "sparsegpt", sparsity=0.5)       # or "wanda", "magnitude"
    report = prune_model(model, calib, "wanda", nm="2:4")
    report = prune_model(model, None, "magnitude", sparsity=0.5)         # no calibration needed
    print_table(report.rows())

Wanda and SparseGPT need each layer's inputs. They run on GPTQ's sequential pipeline
(course_lib.gptq.model.sequential_layers): block by block, each layer's Hessian H = 2/n sum x x^T
collected on the inputs that the already-pruned layers before it produce. SparseGPT uses H
whole; Wanda only its diagonal, since ||X_j||_2^2 = n/2 * H_jj (and a per-row comparison is blind
to the constant n/2). Magnitude needs no data and runs layer by layer on the weights.

The lm_head (and embeddings) stay dense, as in the papers. Pruning is in place: the model keeps its
nn.Linear layers, with zeros in them; the sparse formats that can make that faster are the
subject of course_lib.prune.sparse_bench.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..gptq.model import layer_groups, sequential_layers
from ..lm.blocks import check_calibration
from .sparsegpt import sparsegpt_prune_weight
from .unstructured import check_nm_fits, check_sparsity, magnitude_mask, parse_nm, sparsity_of, wanda_mask

METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass
class PruneReport:
    """What prune_model did: one dict per layer {"name", "shape", "sparsity", "loss", "seconds"}
    (loss: SparseGPT's output-error estimate, None for the others)."""

    method: str
    sparsity: float
    nm: tuple[int, int] | None
    layers: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def rows(self) -> list[dict]:
        return [{"layer": d["name"], "shape": "x".join(map(str, d["shape"])), "sparsity": d["sparsity"]}
                for d in self.layers]

    @property
    def overall_sparsity(self) -> float:
        """Zeros over weights, over all pruned layers."""
        total = sum(d["shape"][0] * d["shape"][1] for d in self.layers)
        return sum(d["sparsity"] * d["shape"][0] * d["shape"][1] for d in self.layers) / total


@torch.no_grad()
def prune_model(model: nn.Module, calibration: torch.Tensor | None, method: str = "sparsegpt", *,
                sparsity: float = 0.5, nm=None, scope: str = "layer", bits: int | None = None,
                blocksize: int = 128, percdamp: float = 0.01, true_sequential: bool = False,
                skip: tuple[str, ...] = ("lm_head",), batch_size: int = 16, progress: bool = True,
                device: torch.device | str | None = None) -> PruneReport:
    """Prune the decoder blocks' linear layers in place and return a PruneReport.

    method: "magnitude" (scope "layer": one threshold per layer; "row": per output row), "wanda"
      (per row) or "sparsegpt" (bits: prune and quantize jointly, one scale per row).
    nm: an N:M pattern such as "2:4" instead of a sparsity.
    true_sequential: False (default, as both papers' code does) collects the Hessians of all of a
      block's layers in one pass over the block; True prunes [q, k, v], then o, ... and collects each
      group's inputs after the earlier groups are pruned (GPTQ's option): more passes, a little better.
    calibration: LongTensor (n_samples, seq_len) of token ids (None is fine for magnitude).
    Everything (method, sparsity, pattern fit, calibration) is checked before any weight changes.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    nm = parse_nm(nm)
    sparsity = 1 - nm[0] / nm[1] if nm else check_sparsity(sparsity)
    if bits is not None and method != "sparsegpt":
        raise ValueError(f"bits (joint quantization) is a SparseGPT option; got it with method {method!r}. "
                         f"Quantize the pruned model afterwards instead (e.g. course_lib.gptq).")
    path, blocks, groups = layer_groups(model, skip, true_sequential, what="pruning")
    for i, block in enumerate(blocks):
        for name in sum(groups, []):
            check_nm_fits(block.get_submodule(name).in_features, nm, f"{path}.{i}.{name}")
    if method != "magnitude":
        if calibration is None:
            raise ValueError(f"{method} needs calibration token ids: pass "
                             f"course_lib.lm.tokens.calibration_batches(tok, n, seq_len).")
        check_calibration(model, calibration)

    report = PruneReport(method=method, sparsity=sparsity, nm=nm)
    t0 = time.perf_counter()
    if method == "magnitude":
        for i, block in enumerate(blocks):
            for name in sum(groups, []):
                t = time.perf_counter()
                layer = block.get_submodule(name)
                layer.weight.mul_(magnitude_mask(layer.weight, sparsity, scope=scope, nm=nm))
                _record(report, f"{path}.{i}.{name}", layer, None, t)
    else:
        jobs = sequential_layers(model, calibration, groups, batch_size=batch_size, device=device,
                                 progress=progress, desc=f"{method} blocks", what="pruning")
        for job in jobs:
            t = time.perf_counter()
            W = job.layer.weight
            if method == "wanda":
                x_norm = torch.diag(job.H).clamp(min=0).sqrt()  # proportional to ||X_j||_2
                W.mul_(wanda_mask(W, x_norm, sparsity, nm=nm, name=job.name))
                loss = None
            else:
                res = sparsegpt_prune_weight(W, job.H, sparsity, nm=nm, bits=bits, blocksize=blocksize,
                                             percdamp=percdamp, name=job.name)
                W.copy_(res.weight)
                loss = res.loss
            _record(report, job.name, job.layer, loss, t)
    report.seconds = time.perf_counter() - t0
    return report


def _record(report: PruneReport, name: str, layer: nn.Linear, loss: float | None, t: float) -> None:
    report.layers.append({"name": name, "shape": tuple(layer.weight.shape), "sparsity": sparsity_of(layer.weight),
                          "loss": loss, "seconds": time.perf_counter() - t})


def model_sparsity(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> dict:
    """Zeros in the decoder blocks' linear weights against all of the model's parameters."""
    path, blocks, groups = layer_groups(model, skip, what="pruning")
    names = sum(groups, [])
    zeros = sum(int((b.get_submodule(n).weight == 0).sum()) for b in blocks for n in names)
    linear = sum(b.get_submodule(n).weight.numel() for b in blocks for n in names)
    total = sum(p.numel() for p in model.parameters())
    return {"linear_sparsity": zeros / linear, "model_sparsity": zeros / total, "linear_params": linear,
            "total_params": total}
