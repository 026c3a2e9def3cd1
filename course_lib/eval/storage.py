"""Bytes on disk and bits per weight of a compressed model, measured from its files or computed from a layout.

    s = measured(directory, model)              # the *.safetensors / *.gguf files the writer left there
    s = computed(model, gptq_layout(bits=4, group_size=128))   # no writer: the bytes of the storage layout
    s.bytes, s.bpw, s.how                       # total weight bytes, bits per weight, "measured" or "computed"

Definitions (the leaderboard's columns):

* **bytes**: the weight files only (``*.safetensors``, ``*.gguf``), not config.json or tokenizer files; a
  safetensors file counts its small JSON header, a GGUF file its metadata (architecture, and the tokenizer's
  tokens and merges where the writer put them in). A computed row counts tensor bytes only.
* **quantized layers**: the linear layers the methods compress, every ``nn.Linear`` except ``lm_head``
  (``course_lib.lm.models.linear_layers``): q, k, v, o, gate, up and down of each decoder block.
* **bpw** (bits per weight) = 8 x (stored bytes of the quantized layers' tensors) / (their number of weights).
  A layer's stored tensors are everything the file keeps for it: codes, scales, zero points, group indices,
  shapes, quantization-state tensors, bias (safetensors: every tensor named ``<layer>.*``; GGUF: the layer's
  tensor, whose blocks hold their scales). Embeddings, norms and the head are in ``bytes`` but not in ``bpw``.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

WEIGHT_FILES = ("*.safetensors", "*.gguf")


@dataclass(frozen=True)
class Storage:
    """How many bytes a variant takes: in all (`bytes`) and in its quantized layers (`linear_bytes`)."""

    bytes: int
    linear_bytes: int
    linear_weights: int
    how: str                      # "measured" (files written and read back) or "computed" (a layout's formula)
    format: str                   # e.g. "safetensors, GPTQ v1", "GGUF Q4_0"
    files: tuple[str, ...] = ()   # the measured files (names within `directory`)
    directory: str = ""

    @property
    def bpw(self) -> float:
        return 8 * self.linear_bytes / self.linear_weights


def quantized_layers(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{name: (out_features, in_features)} of the layers whose bits `bpw` counts (every linear layer but lm_head)."""
    from ..lm.models import linear_layers, weight_matrix

    # nn.Linear's own sizes: a bitsandbytes 4-bit layer's weight tensor is the packed codes, (out * in / 2, 1)
    return {name: (m.out_features, m.in_features) if isinstance(m, nn.Linear) else tuple(weight_matrix(m).shape)
            for name, m in linear_layers(model).items()}


def weight_files(directory: str | Path) -> list[Path]:
    files = sorted({p for pattern in WEIGHT_FILES for p in Path(directory).glob(pattern)})
    if not files:
        raise FileNotFoundError(f"No {' or '.join(WEIGHT_FILES)} files in {directory}: nothing was written there.")
    return files


def safetensors_sizes(path: str | Path) -> dict[str, int]:
    """{tensor name: bytes} from a safetensors file's header (8-byte length, then JSON), without reading data."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def gguf_sizes(path: str | Path) -> dict[str, int]:
    """{GGUF tensor name: bytes of its blocks} (gguf.GGUFReader reads the index)."""
    import gguf

    return {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}


def _layer_bytes(sizes: dict[str, int], layers, gguf_names: bool) -> int:
    if gguf_names:
        from ..mixed.gguf_io import gguf_name

        names = {gguf_name(f"{layer}.weight") for layer in layers}
        found = names & set(sizes)
        if found != names:
            raise ValueError(f"The GGUF file lacks {sorted(names - found)[:3]}...: not this model's file?")
        return sum(sizes[n] for n in names)
    total = 0
    for layer in layers:
        mine = [k for k in sizes if k.startswith(f"{layer}.")]
        if not mine:
            raise ValueError(f"No tensor of layer {layer!r} in the checkpoint: not this model's file?")
        total += sum(sizes[k] for k in mine)
    return total


def measured(directory: str | Path, model: nn.Module, fmt: str) -> Storage:
    """The weight files in `directory` (written by a course writer for `model`'s variant), measured."""
    files = weight_files(directory)
    layers = quantized_layers(model)
    sizes: dict[str, int] = {}
    gguf_names = any(f.suffix == ".gguf" for f in files)
    for f in files:
        sizes.update(gguf_sizes(f) if f.suffix == ".gguf" else safetensors_sizes(f))
    return Storage(bytes=sum(f.stat().st_size for f in files), linear_bytes=_layer_bytes(sizes, layers, gguf_names),
                   linear_weights=sum(o * i for o, i in layers.values()), how="measured", format=fmt,
                   files=tuple(f.name for f in files), directory=str(directory))


def save_dense(model: nn.Module, directory: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Every tensor of `model` (tied ones once) in `dtype`, as one model.safetensors: a dense checkpoint."""
    from safetensors.torch import save_file

    from ..gptq.export import float_tensors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.to(dtype) if t.is_floating_point() else t for k, t in float_tensors(model, set()).items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


# --- layouts: the bytes of one (out, in) layer in a storage format that no course writer writes -----------------

Layout = Callable[[int, int], int]


def group_layout(bits: int, group_size: int, *, scale_bits: int = 16, zero_bits: int = 16, index_bits: int = 0,
                 word_bits: int = 32) -> Layout:
    """Codes of `bits` packed into `word_bits` words along the input dimension, and per group of `group_size`
    inputs and per output one scale (`scale_bits`) and one zero point (`zero_bits`, packed like the codes when
    it is below 16; 0 for a symmetric grid), plus an `index_bits` group index per input (GPTQ's g_idx)."""
    def layout(out_f: int, in_f: int) -> int:
        if in_f % group_size:
            raise ValueError(f"group size {group_size} does not divide {in_f} inputs.")
        groups = in_f // group_size
        codes = out_f * math.ceil(in_f * bits / word_bits) * word_bits
        zeros = groups * (math.ceil(out_f * zero_bits / word_bits) * word_bits if zero_bits < 16 else out_f * zero_bits)
        return (codes + groups * out_f * scale_bits + zeros + in_f * index_bits) // 8
    return layout


def gptq_layout(bits: int, group_size: int) -> Layout:
    """The GPTQ "v1" checkpoint (gptq.qlinear): qweight int32 (in * bits / 32, out), qzeros int32
    (groups, out * bits / 32), scales float16 (groups, out), g_idx int32 (in). save_gptq_checkpoint writes it for
    2, 4 and 8 bits; 3 bits packs 32 codes into 3 words the same way (computed here)."""
    return group_layout(bits, group_size, scale_bits=16, zero_bits=bits, index_bits=32)


def w8a8_layout(out_f: int, in_f: int) -> int:
    """An int8 weight and a float16 scale per output channel (activation scales are computed on the fly)."""
    return out_f * in_f + 2 * out_f


def sparse24_layout(out_f: int, in_f: int, value_bytes: int = 2) -> int:
    """2:4 semi-structured sparsity (cuSPARSELt / CUTLASS): the 2 kept values of every 4 in 16 bits, and a 2-bit
    position for each kept value: (2 x 16 + 2 x 2) / 4 = 9 bits per weight."""
    if in_f % 4:
        raise ValueError(f"2:4 sparsity needs a multiple of 4 inputs, got {in_f}.")
    kept = out_f * in_f // 2
    return kept * value_bytes + kept * 2 // 8


def computed(model: nn.Module, layout: Layout | dict[str, Layout], fmt: str,
             float_dtype: torch.dtype = torch.bfloat16) -> Storage:
    """Bytes of `model` stored with `layout` for its quantized layers (one for all, or one per layer name; a bias
    in 16 bits) and every other tensor (embeddings, norms, head; tied ones once) in `float_dtype`: tensor bytes
    only, no file header."""
    from ..gptq.export import float_tensors

    layers = quantized_layers(model)
    linear = 0
    for name, (out_f, in_f) in layers.items():
        bias = getattr(model.get_submodule(name), "bias", None)
        fn = layout[name] if isinstance(layout, dict) else layout
        linear += fn(out_f, in_f) + (2 * bias.numel() if bias is not None else 0)
    skip = {f"{name}.{part}" for name in layers for part in ("weight", "bias")}
    size = torch.tensor([], dtype=float_dtype).element_size()
    rest = sum(t.numel() * (size if t.is_floating_point() else t.element_size())
               for k, t in float_tensors(model, set()).items() if k not in skip)
    return Storage(bytes=linear + rest, linear_bytes=linear, linear_weights=sum(o * i for o, i in layers.values()),
                   how="computed", format=fmt)
