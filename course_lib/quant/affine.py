"""Uniform (affine) integer quantization of a weight tensor: the primitive behind every later chapter.

    qt = quantize(w, bits=4, granularity="group", group_size=128)   # integer codes + scales
    w_hat = dequantize(qt)                                           # back to floats
    w_hat = fake_quantize(w, bits=4)                                 # the two in one step
    quant_error(w, bits=4)                                           # {"mse", "max_abs", "rel_fro"}

The map (one scale ``s`` and zero point ``z`` per tensor, row or group):

    q     = clamp(round(w / s) + z, qmin, qmax)      integer code
    w_hat = s * (q - z)                              dequantized value

Symmetric quantization fixes ``z = 0``; asymmetric ("affine") quantization picks ``z`` so that the
range [min, max] of the values fills the whole unsigned grid [0, 2^b - 1].

Rounding is ``torch.round``: round half to even (2.5 -> 2, 3.5 -> 4), the IEEE default, unbiased
on ties. Everything is computed in float32 whatever the input dtype; ``dequantize`` returns the
original dtype.

Scale layout (``QTensor.scale`` and ``QTensor.zero`` have the same shape):

    granularity   w shape       scale shape             one scale per
    "tensor"      any           ()                      whole tensor
    "channel"     (out, in)     (out, 1)                output row
    "group"       (out, in)     (out, in // g, 1)       g contiguous inputs of a row

For "group" the codes are viewed as (out, in // g, g) to apply the scales; ``q`` itself always
has the original shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GRANULARITIES = ("tensor", "channel", "group")


def qrange(bits: int, symmetric: bool, *, restricted: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of the integer grid.

    symmetric, full range:        [-2^(b-1), 2^(b-1) - 1]        e.g. int8 [-128, 127]
    symmetric, restricted range:  [-(2^(b-1) - 1), 2^(b-1) - 1]  e.g. int8 [-127, 127]
    asymmetric:                   [0, 2^b - 1]                   e.g. uint8 [0, 255]
    """
    _check_bits(bits)
    if not symmetric:
        return 0, 2**bits - 1
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if restricted else -qmax - 1), qmax


def grid_name(bits: int, symmetric: bool = True, *, restricted: bool = False, gptq_grid: bool = False) -> str:
    """The name the course prints for an RTN grid, so that every table says which grid it used.

    grid_name(4)                   'restricted symmetric [-7, 7]'  s = max|w| / 7 (the default: -8 is never reached)
    grid_name(4, gptq_grid=True)   "GPTQ's grid [-8, 7]"           s = 2 max|w| / 15, every code used
    grid_name(4, symmetric=False)  'asymmetric [0, 15]'            s = (max - min) / 15 plus a zero point
    """
    _check_bits(bits)
    if gptq_grid and restricted:
        raise ValueError("gptq_grid uses the full grid [-2^(b-1), 2^(b-1)-1]; it can't be restricted.")
    if not symmetric:
        return f"asymmetric [0, {2**bits - 1}]"
    h = 2 ** (bits - 1)
    if gptq_grid:
        return f"GPTQ's grid [{-h}, {h - 1}]"
    return f"restricted symmetric [{-(h - 1)}, {h - 1}]"  # restricted or not: -h is never reached


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int from 2 to 8, got {bits!r} ({type(bits).__name__}).")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be from 2 to 8, got {bits}; use 8 for int8, 4 for int4 and so on.")


def _suggest_group_sizes(n: int) -> str:
    """A few divisors of n for error messages: the largest powers of two >= 8, else any divisors."""
    divs = [d for d in range(1, n + 1) if n % d == 0]
    pick = [d for d in divs if d >= 8 and d & (d - 1) == 0]
    if len(pick) < 2:
        pick = [d for d in divs if d >= 8] or divs
    words = [str(d) for d in pick[-4:]]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def check_args(w: torch.Tensor, bits: int, granularity: str, group_size: int | None) -> int | None:
    """Validate the arguments of ``quantize``; return the effective group size (None unless "group")."""
    _check_bits(bits)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor, got {type(w).__name__}.")
    if not w.is_floating_point():
        raise TypeError(f"Can only quantize a floating-point tensor, got dtype {w.dtype}; convert it with .float() first.")
    if w.numel() == 0:
        raise ValueError("Cannot quantize an empty tensor.")
    if granularity not in GRANULARITIES:
        raise ValueError(f"Unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}.")
    if granularity == "tensor":
        return None
    if w.dim() != 2:
        raise ValueError(f"granularity {granularity!r} needs a 2-D (out_features, in_features) weight, got shape "
                         f"{tuple(w.shape)}; use granularity='tensor' or reshape the weight to 2-D.")
    if granularity == "channel":
        return None
    in_features = w.shape[1]
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"granularity 'group' needs a positive int group_size, got {group_size!r}; "
                         f"use a divisor of in_features {in_features} such as {_suggest_group_sizes(in_features)}.")
    if in_features % group_size:
        raise ValueError(f"group_size {group_size} does not divide in_features {in_features}; "
                         f"use a divisor such as {_suggest_group_sizes(in_features)}.")
    return group_size


def to_blocks(w: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """w (float32) viewed so that each scale covers the last dim: (1, numel), (out, 1, in) or (out, in/g, g).

    "channel" is the group case with g = in_features, so both take the same arithmetic path
    (group_size == in_features gives bit-identical results to per-channel)."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    out_f, in_f = w.shape
    g = in_f if granularity == "channel" else group_size
    return w.reshape(out_f, in_f // g, g)


def compute_scale_zero(blocks: torch.Tensor, bits: int, symmetric: bool,
                       restricted: bool = False, gptq_grid: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per block (reduced over the last dim, kept as size 1), float32.

    Symmetric: s = max|w| / qmax with qmax = 2^(b-1) - 1, z = 0.
               gptq_grid=True: s = 2 max|w| / (2^b - 1) = max|w| / (qmax + 1/2), GPTQ's sym=True grid (and
               GPTQModel's and llm-compressor's): all 2^b codes are used and +-max|w| round to within
               half a step, like every other weight.
    Asymmetric: the range is widened to include 0, lo = min(min w, 0), hi = max(max w, 0);
                s = (hi - lo) / (2^b - 1), z = clamp(round(-lo / s), 0, 2^b - 1).
    A block of zeros (s = 0) gets s = 1, so it quantizes to q = z and dequantizes to exactly 0.
    """
    qmin, qmax = qrange(bits, symmetric, restricted=restricted)
    if gptq_grid and restricted:
        raise ValueError("gptq_grid uses the full grid [-2^(b-1), 2^(b-1)-1]; it can't be restricted.")
    if symmetric:
        scale = blocks.abs().amax(dim=-1, keepdim=True) / (qmax + 0.5 if gptq_grid else qmax)
        zero = torch.zeros_like(scale)
    else:
        lo = blocks.amin(dim=-1, keepdim=True).clamp(max=0.0)
        hi = blocks.amax(dim=-1, keepdim=True).clamp(min=0.0)
        scale = (hi - lo) / qmax
    # Zero (or underflowing) scales would divide 0 by 0: use 1, any positive value works.
    scale = torch.where(scale > torch.finfo(torch.float32).tiny, scale, torch.ones_like(scale))
    if not symmetric:
        zero = torch.round(-lo / scale).clamp(qmin, qmax)
    return scale, zero


def quantize_blocks(blocks: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int,
                    round_fn=torch.round) -> torch.Tensor:
    """q = clamp(round(w / s) + z, qmin, qmax), as float32 holding integers. `round_fn` lets the STE swap in."""
    return torch.clamp(round_fn(blocks / scale) + zero, qmin, qmax)


@dataclass
class QTensor:
    """Integer codes of a quantized tensor plus what is needed to dequantize them.

    q      integer codes, shape of the original tensor; int8 (symmetric) or uint8 (asymmetric)
    scale  float32 scales (layout in the module docstring); zero: float32 zero points, same shape
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    symmetric: bool
    granularity: str
    group_size: int | None
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes_ideal(self) -> float:
        """Bytes if codes were packed at `bits` each: bits*numel/8 + the scales (+ zero points if asymmetric),
        scales and zero points counted as stored here (float32)."""
        meta = self.scale.numel() * self.scale.element_size()
        if not self.symmetric:
            meta += self.zero.numel() * self.zero.element_size()
        return self.bits * math.prod(self.shape) / 8 + meta

    @property
    def bits_per_weight(self) -> float:
        """Average storage per weight including the scale overhead."""
        return 8 * self.nbytes_ideal / math.prod(self.shape)


def quantize(w: torch.Tensor, bits: int = 8, *, symmetric: bool = True, granularity: str = "channel",
             group_size: int | None = 128, restricted: bool = False, gptq_grid: bool = False) -> QTensor:
    """Round-to-nearest quantization of `w` to `bits`-bit integers (see the module docstring).

    granularity: "tensor" (one scale), "channel" (one per output row of a 2-D (out, in) weight) or
    "group" (one per `group_size` contiguous inputs of each row; group_size == in_features is
    per-channel). group_size is ignored unless granularity == "group".

    Three "symmetric" int grids are in common use (int8 shown):
      * restricted [-127, 127], s = max|w|/127 (``restricted=True``): the grid is symmetric about 0;
      * full [-128, 127], s = max|w|/127 (the default): same scale, so values never need -128
        (only the clamp could reach it) and the result equals the restricted grid's;
      * full [-128, 127], s = max|w|/128: one more level of resolution, but +max|w| rounds to 128
        and is clipped to 127 (not implemented here; see quant.analysis.symmetric_grids);
      * full [-128, 127], s = max|w|/127.5 (``gptq_grid=True``): GPTQ's grid, every code used and no
        weight further than half a step from its value.
    (Asymmetric grids are the same everywhere: gptq_grid changes nothing there.)
    """
    group_size = check_args(w, bits, granularity, group_size)
    if not torch.isfinite(w.detach()).all():
        raise ValueError("The tensor holds NaN or inf values; quantization needs finite weights (check the model).")
    qmin, qmax = qrange(bits, symmetric, restricted=restricted)
    blocks = to_blocks(w.detach().to(torch.float32), granularity, group_size)
    scale, zero = compute_scale_zero(blocks, bits, symmetric, restricted, gptq_grid)
    q = quantize_blocks(blocks, scale, zero, qmin, qmax)
    if granularity == "tensor":
        scale, zero = scale.reshape(()), zero.reshape(())
    elif granularity == "channel":
        scale, zero = scale.reshape(-1, 1), zero.reshape(-1, 1)
    return QTensor(q=q.reshape(w.shape).to(torch.int8 if symmetric else torch.uint8), scale=scale, zero=zero,
                   bits=bits, symmetric=symmetric, granularity=granularity, group_size=group_size,
                   shape=tuple(w.shape), dtype=w.dtype)


def dequantize(qt: QTensor) -> torch.Tensor:
    """w_hat = scale * (q - zero), in the original dtype and shape."""
    q = qt.q.to(torch.float32)
    if qt.granularity == "group":
        out_f, in_f = qt.shape
        q = q.reshape(out_f, in_f // qt.group_size, qt.group_size)
    return (qt.scale * (q - qt.zero)).reshape(qt.shape).to(qt.dtype)


def fake_quantize(w: torch.Tensor, bits: int = 8, *, symmetric: bool = True, granularity: str = "channel",
                  group_size: int | None = 128, restricted: bool = False, gptq_grid: bool = False) -> torch.Tensor:
    """dequantize(quantize(w, ...)): the float tensor the quantized model effectively computes with."""
    return dequantize(quantize(w, bits, symmetric=symmetric, granularity=granularity, group_size=group_size,
                               restricted=restricted, gptq_grid=gptq_grid))


def quant_error(w: torch.Tensor, bits: int = 8, **kw) -> dict[str, float]:
    """Error of fake_quantize(w, bits, **kw): mse, max_abs and rel_fro = ||w - w_hat||_F / ||w||_F."""
    w32 = w.detach().to(torch.float32)
    err = w32 - fake_quantize(w, bits, **kw).to(torch.float32)
    norm, err_norm = torch.linalg.vector_norm(w32).item(), torch.linalg.vector_norm(err).item()
    rel = err_norm / norm if norm > 0 else (0.0 if err_norm == 0 else math.inf)
    return {"mse": err.pow(2).mean().item(), "max_abs": err.abs().max().item(), "rel_fro": rel}


def broadcast_scale(qt: QTensor) -> torch.Tensor:
    """The scale of every element, shape of the original tensor (for error bounds and plots)."""
    if qt.granularity == "group":
        out_f, in_f = qt.shape
        ones = torch.ones(out_f, in_f // qt.group_size, qt.group_size, device=qt.scale.device)
        return (qt.scale * ones).reshape(qt.shape)
    return qt.scale.expand(qt.shape).clone()
