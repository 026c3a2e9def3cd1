"""Layer sensitivity, measured as EXL2 measures it: every linear layer quantized with every candidate setting.

    m = measure(model, calibration)                  # cached: computed once per model, calibration and settings
    m.error[i, j]                                    # layer m.layers[i] quantized with m.settings[j]
    m.bits(i, j)                                     # the bits that setting stores for that layer

EXL2 (exllamav2's ``measure``) runs the calibration data through the model, quantizes each module with every
candidate bit width and scores it by the error of the module's *output* on the calibration hidden states,
relative to the float output. Here each linear layer is quantized with GPTQ for each setting, on the Hessian
H = 2/n sum_t x_t x_t^T of the inputs the float model gives it, and scored by its relative output error

    err = ||(Q - W) X||_F / ||W X||_F = sqrt(tr(D H D^T) / tr(W H W^T)),      D = Q - W,

over the calibration tokens (no matrix of activations is kept: H is enough). Inputs come from the float model,
as in EXL2's measurement pass, so one layer's error does not depend on the settings of the layers before it.

With ``kl_tokens``, each layer x setting is also scored end to end: the quantized weights put into that one layer,
the mean KL divergence of the whole model's next-token distributions from the float model's (``Measurement.kl``,
``Measurement.end_to_end()``). It costs a forward pass per layer and setting, and sees what the relative error
cannot: how much the layer's error matters downstream.

Bits are counted as the course's mixed checkpoint stores them (compressed-tensors ``pack-quantized``, written by
``checkpoint.py``): each row's b-bit codes packed back to back into int32 words, one fp16 scale per group of g
inputs (symmetric: no zero point), and the layer's shape as two int64:

    bits(layer) = 32 * out * ceil(in * b / 32)  +  16 * out * in / g  +  128.

(A GPTQ checkpoint packs codes tightly but adds a b-bit zero point per group and an int32 group index per input.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..gptq.core import gptq_quantize_weight
from ..gptq.model import layer_groups, sequential_layers

FORMAT_VERSION = 3


@dataclass(frozen=True, order=True)
class Setting:
    """One candidate: `bits` per code, one scale and zero per `group_size` inputs (GPTQ, symmetric)."""

    bits: int
    group_size: int

    @property
    def label(self) -> str:
        return f"{self.bits}b g{self.group_size}"

    def layer_bits(self, out_features: int, in_features: int) -> int:
        """Bits the checkpoint stores for one (out, in) layer: packed codes, fp16 scales, the shape (module doc)."""
        if in_features % self.group_size:
            raise ValueError(f"group size {self.group_size} does not divide the layer's {in_features} inputs; "
                             f"pick settings whose group sizes divide every layer's input size.")
        words = out_features * -(-in_features * self.bits // 32)
        return 32 * words + 16 * out_features * (in_features // self.group_size) + 128

    def bits_per_weight(self, out_features: int, in_features: int) -> float:
        return self.layer_bits(out_features, in_features) / (out_features * in_features)


SETTINGS = tuple(Setting(b, g) for b in (2, 3, 4, 5, 6, 8) for g in (32, 128))


@dataclass
class Measurement:
    """error[i][j]: relative output error of layers[i] quantized with settings[j]; shapes[i] = (out, in);
    energy[i]: the layer's mean squared output over the calibration tokens, ||W X||_F^2 / n = tr(W H W^T) / 2,
    so that energy[i] * error[i][j] ** 2 is the absolute squared output error (GPTQ's loss without damping);
    kl[i][j] (when measured with kl_tokens): the mean KL divergence of the whole model's next-token distributions
    from the float model's, with only layers[i] quantized with settings[j]."""

    layers: list[str]
    shapes: list[tuple[int, int]]
    settings: list[Setting]
    error: list[list[float]]
    energy: list[float] = field(default_factory=list)
    kl: list[list[float]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def bits(self, i: int, j: int) -> int:
        return self.settings[j].layer_bits(*self.shapes[i])

    @property
    def n_weights(self) -> int:
        return sum(o * k for o, k in self.shapes)

    def error_tensor(self) -> torch.Tensor:
        return torch.tensor(self.error, dtype=torch.float64)

    def subset(self, settings) -> Measurement:
        """The same measurement restricted to `settings` (each must have been measured)."""
        missing = [s.label for s in settings if s not in self.settings]
        if missing:
            raise ValueError(f"Not measured: {missing}; measured: {[s.label for s in self.settings]}.")
        idx = [self.settings.index(s) for s in settings]
        return Measurement(list(self.layers), list(self.shapes), list(settings),
                           [[row[j] for j in idx] for row in self.error], list(self.energy),
                           [[row[j] for j in idx] for row in self.kl], dict(self.meta))

    def absolute(self) -> Measurement:
        """The same measurement scored by the RMS output error, sqrt(energy) * error, instead of the relative one
        (layers whose outputs are large count more)."""
        if len(self.energy) != len(self.layers):
            raise ValueError("This measurement has no output energies; measure again.")
        return Measurement(list(self.layers), list(self.shapes), list(self.settings),
                           [[e * math.sqrt(en) for e in row] for row, en in zip(self.error, self.energy)],
                           list(self.energy), [], {**self.meta, "score": "absolute"})

    def end_to_end(self) -> Measurement:
        """The same measurement scored by the KL divergence of the model's output (kl), to be summed as it is
        (norm 1): small independent perturbations add their KL divergences, to first order."""
        if len(self.kl) != len(self.layers):
            raise ValueError("This measurement has no end-to-end KL scores; measure with kl_tokens=... .")
        return Measurement(list(self.layers), list(self.shapes), list(self.settings), [list(r) for r in self.kl],
                           list(self.energy), [list(r) for r in self.kl], {**self.meta, "score": "kl", "norm": 1.0})

    def to_json(self) -> dict:
        return {"version": FORMAT_VERSION, "layers": self.layers, "shapes": [list(s) for s in self.shapes],
                "settings": [[s.bits, s.group_size] for s in self.settings], "error": self.error,
                "energy": self.energy, "kl": self.kl, "meta": self.meta}

    @classmethod
    def from_json(cls, data: dict) -> Measurement:
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"Measurement format {data.get('version')!r}, expected {FORMAT_VERSION}; measure again.")
        return cls(list(data["layers"]), [tuple(s) for s in data["shapes"]],
                   [Setting(b, g) for b, g in data["settings"]], [list(r) for r in data["error"]],
                   list(data["energy"]), [list(r) for r in data.get("kl", [])], data.get("meta", {}))

    def rows(self) -> list[dict]:
        """One row per layer: its name and the error of each setting (for print_table)."""
        return [{"layer": name, **{s.label: e for s, e in zip(self.settings, errs)}}
                for name, errs in zip(self.layers, self.error)]


def relative_output_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """||(Q - W) X||_F / ||W X||_F over the tokens whose Hessian is H = 2/n X^T X (float64)."""
    W, Q, H = W.double(), Q.double(), H.double()
    D = Q - W
    num = torch.einsum("oi,ij,oj->", D, H, D).clamp_min(0)
    den = torch.einsum("oi,ij,oj->", W, H, W)
    return float(torch.sqrt(num / den)) if den > 0 else 0.0


def _fingerprint(model: nn.Module, calibration: torch.Tensor, settings, names: list[str], kwargs: dict) -> str:
    h = hashlib.sha256()
    for name in names:
        w = model.get_submodule(name).weight.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(w.numpy().tobytes())
    h.update(calibration.to("cpu").contiguous().numpy().tobytes())
    h.update(json.dumps([[s.bits, s.group_size] for s in settings]).encode())
    h.update(json.dumps(kwargs, sort_keys=True).encode())
    h.update(str(FORMAT_VERSION).encode())
    h.update(f"threads={torch.get_num_threads()}".encode())  # float sums in another order: other last digits
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    from ..lm.real_model import cache_root

    return cache_root() / "mixed-sensitivity"


def _check_settings(settings, model: nn.Module, names: list[str]) -> list[Setting]:
    settings = list(settings)
    if not settings or not all(isinstance(s, Setting) for s in settings):
        raise TypeError("settings must be a non-empty sequence of course_lib.mixed.Setting(bits, group_size).")
    if len(set(settings)) != len(settings):
        raise ValueError("settings contains a duplicate.")
    for s in settings:
        if s.bits not in (2, 3, 4, 5, 6, 7, 8):
            raise ValueError(f"{s.label}: bits must be 2..8.")
        for name in names:
            s.layer_bits(*model.get_submodule(name).weight.shape)   # raises if the group size does not divide
    return settings


def _log_probs(model: nn.Module, ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([torch.log_softmax(model(ids[i:i + batch_size]).logits.double(), dim=-1)
                      for i in range(0, len(ids), batch_size)])


def kl_divergence(ref_logp: torch.Tensor, logp: torch.Tensor) -> float:
    """Mean over positions of KL(p_ref || p) = sum_v p_ref (log p_ref - log p)."""
    return float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean())


@torch.no_grad()
def measure(model: nn.Module, calibration: torch.Tensor, settings=SETTINGS, *, kl_tokens: torch.Tensor | None = None,
            cache_dir: Path | str | None = None, use_cache: bool = True, skip: tuple[str, ...] = ("lm_head",),
            percdamp: float = 0.01, act_order: bool = False, batch_size: int = 16, progress: bool = False,
            device: torch.device | str | None = None) -> Measurement:
    """Quantize every linear layer of the decoder blocks with every setting (GPTQ on the float model's inputs) and
    record its relative output error; the model is left unchanged.

    kl_tokens: a LongTensor (n, seq) of held-out token ids; if given, each layer x setting is also scored end to end:
    the quantized weights are put in that one layer, the whole model runs on kl_tokens, and the mean KL divergence
    of its next-token distributions from the float model's is recorded (Measurement.kl; one extra forward pass per
    layer and setting).
    The result is stored under `cache_dir` (default: the course cache) in a file named by a hash of the weights,
    the calibration (and kl) tokens and the settings, and read from there the next time (use_cache=False measures
    again)."""
    path, blocks, groups = layer_groups(model, skip)
    names = [f"{path}.{i}.{n}" for i in range(len(blocks)) for n in sum(groups, [])]
    settings = _check_settings(settings, model, names)
    kwargs = {"percdamp": percdamp, "act_order": act_order, "symmetric": True}
    tokens = calibration.cpu() if kl_tokens is None else torch.cat([calibration.cpu().flatten(),
                                                                     kl_tokens.cpu().flatten(),
                                                                     torch.tensor(kl_tokens.shape)])
    key = _fingerprint(model, tokens, settings, names, kwargs)
    file = Path(cache_dir or default_cache_dir()) / f"{key}.json"
    if use_cache and file.is_file():
        return Measurement.from_json(json.loads(file.read_text()))

    errors: dict[str, list[float]] = {}
    kls: dict[str, list[float]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    energy: dict[str, float] = {}
    was_training = model.training
    model.eval()
    ref = None if kl_tokens is None else _log_probs(model, kl_tokens.to(next(model.parameters()).device), batch_size)
    for job in sequential_layers(model, calibration, groups, batch_size=batch_size, device=device,
                                 progress=progress, desc="measuring blocks", what="measure"):
        W = job.layer.weight.detach().clone()   # put back after each trial: every layer sees the float model's inputs
        shapes[job.name] = tuple(W.shape)
        energy[job.name] = float(torch.einsum("oi,ij,oj->", W.double(), job.H.double(), W.double())) / 2
        errors[job.name], kls[job.name] = [], []
        for s in settings:
            Q = gptq_quantize_weight(W, job.H, s.bits, group_size=s.group_size, percdamp=percdamp,
                                     act_order=act_order, scale_dtype=torch.float16, name=job.name).qweight_float
            errors[job.name].append(relative_output_error(W, Q, job.H))
            if ref is not None:
                job.layer.weight.copy_(Q)
                kls[job.name].append(kl_divergence(ref, _log_probs(model, kl_tokens.to(W.device), batch_size)))
                job.layer.weight.copy_(W)
    model.train(was_training)
    m = Measurement(names, [shapes[n] for n in names], settings, [errors[n] for n in names], [energy[n] for n in names],
                    [kls[n] for n in names] if ref is not None else [],
                    {"key": key, "calibration": list(calibration.shape),
                     "kl_tokens": None if kl_tokens is None else list(kl_tokens.shape), **kwargs})
    if use_cache:  # written whole, then renamed: a reader in another process never sees half a file
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(m.to_json()))
        os.replace(tmp, file)
    return m
