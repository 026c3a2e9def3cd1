"""Chapter 05's measurements: activation outliers per layer, and how well each 4-bit code fits real weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from .int8 import per_token_error
from .nf4 import code_values, int4_code, quantize_blockwise, roundtrip


def linear_inputs(model: nn.Module, input_ids: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """The float32 input [tokens, in_features] of each named linear layer during one forward pass."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: seen.__setitem__(n, args[0].detach().reshape(-1, args[0].shape[-1]).float()))
        for n in names]
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        for h in hooks:
            h.remove()
    return seen


def outlier_rows(model: nn.Module, input_ids: torch.Tensor, *, threshold: float = 6.0,
                 kinds: tuple[str, ...] = ("q_proj", "o_proj", "gate_proj", "down_proj")) -> list[dict]:
    """Per layer type (all blocks): the share of input columns LLM.int8() keeps in 16 bits, the largest |x|, the
    share of tokens holding an outlier, and for those tokens the median and worst error of absmax int8 and of the
    decomposition relative to the ordinary part of the output (int8.per_token_error); NaN when no token has one."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in kinds]
    inputs = linear_inputs(model, input_ids, names)
    rows = []
    for kind in kinds:
        cols = total = 0
        xmax = 0.0
        plain, mixed, hit = [], [], []
        for n in (n for n in names if n.endswith(kind)):
            x, w = inputs[n], model.get_submodule(n).weight.detach().float()
            err = per_token_error(x, w, threshold=threshold)
            cols += err["outlier_cols"].numel()
            total += x.shape[1]
            xmax = max(xmax, float(x.abs().max()))
            plain.append(err["int8"][err["has_outlier"]])
            mixed.append(err["decomposed"][err["has_outlier"]])
            hit.append(err["has_outlier"])
        plain_t, mixed_t, hit_t = torch.cat(plain), torch.cat(mixed), torch.cat(hit)
        nan = float("nan")
        rows.append({"layer": kind, "columns in 16-bit": cols / max(total, 1), "max |x|": xmax,
                     "tokens with an outlier": float(hit_t.float().mean()),
                     "int8 error (median)": float(plain_t.median()) if plain_t.numel() else nan,
                     "int8 error (worst)": float(plain_t.max()) if plain_t.numel() else nan,
                     "decomposed (median)": float(mixed_t.median()) if mixed_t.numel() else nan,
                     "decomposed (worst)": float(mixed_t.max()) if mixed_t.numel() else nan})
    return rows


CODES = ("nf4", "fp4", "int4")


def code_table(name: str) -> torch.Tensor:
    """The 16 (int4: 15) values of a 4-bit code on [-1, 1]: NF4, bitsandbytes' FP4, symmetric absmax INT4."""
    return int4_code() if name == "int4" else code_values(name)


def code_fit_rows(weights: list[torch.Tensor], blocksize: int = 64) -> list[dict]:
    """For each code, on these weights in blocks of `blocksize`: how evenly the levels are used (entropy, out of
    log2(levels)), how many levels take under 1% of the weights, and the de-quantization error."""
    flat = torch.cat([w.detach().float().reshape(-1) for w in weights])
    rows = []
    for name in CODES:
        code = code_table(name)
        idx, _ = quantize_blockwise(flat, code, blocksize)
        share = torch.bincount(idx.long(), minlength=code.numel()).float() / idx.numel()
        used = share[share > 0]
        err = roundtrip(flat, code, blocksize) - flat
        rows.append({"code": name, "levels": code.unique().numel(), "entropy bits": float(-(used * used.log2()).sum()),
                     "levels under 1%": int((share < 0.01).sum()),
                     "rms error / rms weight": float(err.pow(2).mean().sqrt() / flat.pow(2).mean().sqrt())})
    return rows


def normalized_block_values(w: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """w / absmax of its block, flat: what the 16 code values must cover."""
    flat = w.detach().float().reshape(-1)
    n = flat.numel() // blocksize * blocksize
    blocks = flat[:n].reshape(-1, blocksize)
    return (blocks / blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)).reshape(-1)


def bits_from_storage(model: nn.Module) -> dict[str, float]:
    """Bits per parameter of a bitsandbytes 4-bit model's linear layers, from the bytes it really stores
    (packed codes, absmaxes, second-level scales and offsets; per-tensor code tables left out)."""
    n = nbytes = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        state = getattr(w, "quant_state", None)
        if state is None:
            continue
        n += math.prod(state.shape)
        nbytes += w.numel() * w.element_size() + state.absmax.numel() * state.absmax.element_size()
        if state.nested:
            nbytes += state.state2.absmax.numel() * state.state2.absmax.element_size() + state.offset.element_size()
    return {"parameters": n, "bits per parameter": 8 * nbytes / max(n, 1)}
