"""bitsandbytes itself: loading a model through transformers' BitsAndBytesConfig, and the library's
own functions beside the course's, with every choice stated.

transformers' 4-bit defaults are FP4, float32 compute and no double quantization
(``BitsAndBytesConfig(load_in_4bit=True)``); QLoRA used NF4, bf16 compute and double quantization.
The course never relies on the defaults: ``bnb_config`` spells every field out.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..lm.errors import ModelUnavailableError

KINDS = ("int8", "nf4", "fp4")


def import_bnb():
    """bitsandbytes, imported quietly (formats.import_bitsandbytes_functional), or a ModuleNotFoundError that says
    how to install it."""
    import sys

    from ..core.env import quiet_library_loggers
    from ..formats import import_bitsandbytes_functional

    quiet_library_loggers()
    import_bitsandbytes_functional()
    return sys.modules["bitsandbytes"]


def check_device(device) -> None:
    """A clear error when bitsandbytes cannot run on `device` (it supports cpu, cuda, xpu, hpu, npu, mps;
    on CUDA it needs the native library for torch's CUDA version)."""
    bnb = import_bnb()
    kind = torch.device(device).type
    if kind not in bnb.supported_torch_devices:
        raise RuntimeError(f"bitsandbytes {bnb.__version__} does not run on '{kind}' devices; it supports "
                           f"{', '.join(sorted(bnb.supported_torch_devices))}. Use device='cpu' or a CUDA GPU.")
    if kind == "cuda":
        from bitsandbytes import cextension

        if type(cextension.lib).__name__ == "ErrorHandlerMockBNBNativeLibrary":
            raise RuntimeError(f"bitsandbytes found no native library for CUDA {torch.version.cuda} (its wheel may be a "
                               "slim one built for another CUDA version). Reinstall bitsandbytes with pip on this "
                               "machine, or rebuild the wheelhouse with --bnb-cuda matching torch.version.cuda.")


def transformers_4bit_defaults() -> dict:
    """What BitsAndBytesConfig(load_in_4bit=True) chooses when nothing is said."""
    from transformers import BitsAndBytesConfig

    d = BitsAndBytesConfig(load_in_4bit=True)
    return {"quant type": d.bnb_4bit_quant_type, "compute dtype": str(d.bnb_4bit_compute_dtype).replace("torch.", ""),
            "double quantization": d.bnb_4bit_use_double_quant, "storage": str(d.bnb_4bit_quant_storage)}


def bnb_config(kind: str, *, compute_dtype: torch.dtype = torch.bfloat16, double_quant: bool = True,
               threshold: float = 6.0, skip: tuple[str, ...] = ("lm_head",)):
    """A BitsAndBytesConfig with every field the course relies on written out.

    kind: "int8" (LLM.int8(), outlier threshold `threshold`), "nf4" or "fp4" (4-bit, blocks of 64,
    `double_quant`, matmuls in `compute_dtype`). `skip` stays in 16 bits (transformers keeps lm_head anyway).
    """
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold,
                                  llm_int8_skip_modules=list(skip), llm_int8_has_fp16_weight=False)
    if kind in ("nf4", "fp4"):
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_use_double_quant=double_quant,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=list(skip))
    raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")


def load_quantized(name: str | None, kind: str, *, device="cpu", dtype: torch.dtype = torch.float32, **config):
    """Load a model (bundled, real or hub name: ``models.model_source``) quantized at load time by bitsandbytes.

    No calibration data: every weight is quantized from its own values while it loads. `dtype` is the dtype
    of what stays unquantized (embeddings, norms, lm_head); config goes to ``bnb_config``.
    """
    from transformers import AutoModelForCausalLM

    from ..lm import models

    check_device(device)
    import_bnb()
    config.setdefault("compute_dtype", dtype)
    source = models.model_source(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=bnb_config(kind, **config),
                                                     device_map=str(torch.device(device)), dtype=dtype)
    except OSError as err:
        raise ModelUnavailableError(f"Could not load '{name}' from {source}: {err}") from err
    return model.eval()


def bnb_linear8(linear: nn.Linear, threshold: float = 6.0) -> nn.Module:
    """bitsandbytes' Linear8bitLt holding `linear`'s weight, in inference mode (has_fp16_weights=False).

    Eval mode matters on CPU: in training mode bitsandbytes' CPU path skips the int8 matmul and the
    decomposition and multiplies by the de-quantized weight instead (MatMul8bitFp)."""
    bnb = import_bnb()
    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=threshold)
    layer.load_state_dict(linear.state_dict())
    return layer.to(linear.weight.device).eval()


def compare_int8(linear: nn.Linear, x: torch.Tensor, threshold: float = 6.0) -> dict:
    """The course's LLM.int8() next to bitsandbytes' Linear8bitLt on one layer and input, in float16.

    Outputs differ only by rounding (bitsandbytes rescales with 6.200124e-05, not 1/127^2 = 6.2000124e-05, and
    adds the 16-bit part in another order), so they are compared in float16 steps of each token's largest output:
    a small output that is the difference of large terms carries their rounding.
    """
    from .int8 import Int8Weight, llm_int8_linear

    linear = copy.deepcopy(linear).half()
    layer = bnb_linear8(linear, threshold)
    with torch.no_grad():
        theirs = layer(x.half()).float()
    w, b = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
    ours = llm_int8_linear(x.half(), w, b, threshold=threshold)
    step = torch.finfo(torch.float16).eps * theirs.abs().amax(dim=-1, keepdim=True)
    return {"same outlier columns": torch.equal(layer.state.idx.cpu(), ours.outlier_cols.cpu()),
            "same int8 weight": torch.equal(layer.weight.data.cpu(), Int8Weight.from_float(w).codes.cpu()),
            "max difference, in float16 steps": ((ours.out.float() - theirs).abs() / step).max().item()}


def bnb_quantize_4bit(w: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = True):
    """bitsandbytes.functional.quantize_4bit: (packed uint8 codes, QuantState)."""
    import_bnb()
    import bitsandbytes.functional as F

    return F.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant)


def compare_4bit(w: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = True) -> dict:
    """The course's 4-bit quantizer next to bitsandbytes' on one tensor: how many stored codes agree.

    Two known differences, both explained by numbers here:
    * the course's NF4 table is computed (float64 quantiles) and differs from bitsandbytes' hard-coded one in
      the last bit of some values: 'codes equal' compares with the course's table, 'codes equal (bnb table)'
      with bitsandbytes' table passed in;
    * bitsandbytes' CPU kernel for the 8-bit absmax codes (float32 input) searches the 256-value code
      approximately: where it differs, 'course nearer' says whether the course's choice is the nearer value.
    """
    import bitsandbytes.functional as F

    from . import nf4

    packed, state = bnb_quantize_4bit(w, quant_type, blocksize, double_quant)
    ours = nf4.quantize_4bit(w, quant_type, blocksize, double_quant=double_quant)
    same_table = nf4.quantize_4bit(w, quant_type, blocksize, double_quant=double_quant,
                                   code=F.get_4bit_type(quant_type, device=w.device))
    row = {"values": w.numel(), "codes equal": float((packed.flatten() == ours.packed).float().mean()),
           "codes equal (bnb table)": float((packed.flatten() == same_table.packed).float().mean())}
    if double_quant:
        ours_abs, theirs = same_table.absmax_codes, state.absmax
        differ = (ours_abs != theirs).nonzero().flatten()
        code2 = nf4.dynamic_code().to(w.device)
        _, absmax = nf4.quantize_blockwise(w, same_table.code, blocksize)  # the absmaxes before double quantization
        scale = same_table.absmax_scale[torch.arange(absmax.numel(), device=w.device) // same_table.blocksize2]
        target = (absmax - same_table.offset) * (1.0 / scale)  # what each 8-bit code had to approximate
        nearer = ((target[differ] - code2[ours_abs[differ].long()]).abs()
                  <= (target[differ] - code2[theirs[differ].long()]).abs())
        row.update({"absmax codes equal": float((ours_abs == theirs).float().mean()),
                    "absmax codes differing": int(differ.numel()), "course nearer": bool(nearer.all())})
        same_table.absmax_codes = theirs.clone()  # with bitsandbytes' absmax codes, the values must match exactly
    row["dequantized equal"] = bool(torch.equal(F.dequantize_4bit(packed, state).float(),
                                                nf4.dequantize_4bit(same_table, w.dtype).float()))
    return row
