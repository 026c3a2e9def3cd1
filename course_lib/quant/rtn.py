"""Round-to-nearest (RTN) weight-only quantization of a whole model: the baseline every later
method (GPTQ, AWQ, ...) is compared with.

    report = quantize_model_rtn(model, bits=4, granularity="group", group_size=128)
    print_table(report.rows())

"Fake quantization": each weight is replaced by dequantize(quantize(weight)), so the model stays a
float model with the same code path, but computes with exactly the values an integer model would.
Activations are not quantized.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .affine import check_args, fake_quantize


def rel_fro(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||w - w_hat||_F / ||w||_F, in float32 (0 for an all-zero w reproduced exactly)."""
    w, w_hat = w.to(torch.float32), w_hat.to(torch.float32)
    norm = torch.linalg.vector_norm(w).item()
    err = torch.linalg.vector_norm(w - w_hat).item()
    return err / norm if norm > 0 else (0.0 if err == 0 else float("inf"))


@dataclass
class RTNReport:
    """What quantize_model_rtn did: the (quantized) model and per-layer relative errors."""

    model: nn.Module
    layers: list[dict] = field(default_factory=list)  # {"name", "shape", "rel_fro"} per layer
    bits: int = 8
    granularity: str = "group"
    group_size: int | None = 128

    def rows(self) -> list[dict]:
        """One row per layer for print_table: layer, shape (out x in), rel_fro."""
        return [{"layer": d["name"], "shape": "x".join(map(str, d["shape"])), "rel_fro": d["rel_fro"]}
                for d in self.layers]

    @property
    def mean_rel_fro(self) -> float:
        return sum(d["rel_fro"] for d in self.layers) / max(len(self.layers), 1)


def quantize_model_rtn(model: nn.Module, bits: int, *, symmetric: bool = True, granularity: str = "group",
                       group_size: int | None = 128, skip: tuple[str, ...] = ("lm_head",), inplace: bool = True,
                       restricted: bool = False, gptq_grid: bool = False) -> RTNReport:
    """Fake-quantize (RTN) the weight of every linear layer (nn.Linear and GPT-2 Conv1D) whose name
    does not end in `skip`. With inplace=False the model is deep-copied first. Biases, embeddings and
    norms are left in float. All layers are checked before any weight is changed."""
    from ..lm.models import linear_layers, weight_matrix

    if not inplace:
        model = copy.deepcopy(model)
    kw = dict(symmetric=symmetric, granularity=granularity, group_size=group_size, restricted=restricted,
              gptq_grid=gptq_grid)
    layers = linear_layers(model, skip=skip)
    for name, m in layers.items():
        try:
            check_args(weight_matrix(m), bits, granularity, group_size)
        except ValueError as exc:
            raise ValueError(f"Layer {name!r} (weight {tuple(weight_matrix(m).shape)} as out x in): {exc}") from None
    report = RTNReport(model=model, bits=bits, granularity=granularity,
                       group_size=group_size if granularity == "group" else None)
    with torch.no_grad():
        for name, m in layers.items():
            w = weight_matrix(m)  # (out, in) view, transposed for Conv1D: writing into it writes the weight
            w_hat = fake_quantize(w, bits, **kw)
            report.layers.append({"name": name, "shape": tuple(w.shape), "rel_fro": rel_fro(w, w_hat)})
            w.copy_(w_hat)
    return report
