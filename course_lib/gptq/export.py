"""Save a GPTQ-quantized model as a checkpoint that transformers loads as a GPTQ model.

    report = gptq_quantize_model(model, calib, bits=4, group_size=128)
    save_gptq_checkpoint(model, report, "out/course-model-gptq", tokenizer=tok)
    qmodel = load_gptq_checkpoint("out/course-model-gptq")      # transformers + optimum + gptqmodel

The directory holds what `save_pretrained` of a GPTQ model holds:
  config.json        the model's config plus quantization_config {"quant_method": "gptq", "bits", "group_size",
                     "desc_act", "sym", "checkpoint_format": "gptq", ...}
  model.safetensors  every float tensor of the model, except that each quantized layer's ``weight`` is
                     replaced by ``qweight``, ``qzeros``, ``scales`` and ``g_idx`` (layout: qlinear.py)
  tokenizer files    when a tokenizer is given
transformers hands GPTQ checkpoints to optimum, which swaps every linear layer of the decoder blocks
(or those named in modules_in_block_to_quantize) for a GPTQModel QuantLinear and loads the tensors.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..lm.blocks import find_blocks
from .model import GPTQReport
from .qlinear import PACK_BITS, QuantLinear


def quantization_config(report: GPTQReport, modules_in_block: list[list[str]] | None = None) -> dict:
    """The quantization_config entry of config.json for a report (keys as transformers' GPTQConfig)."""
    cfg = {
        "quant_method": "gptq",
        "bits": report.bits,
        "group_size": report.group_size if report.group_size is not None else -1,
        "desc_act": bool(report.act_order),
        "act_group_aware": False,  # GPTQModel's group-aware reordering: not used here
        "static_groups": bool(report.static_groups),
        "sym": bool(report.symmetric),
        "true_sequential": bool(report.true_sequential),
        "damp_percent": report.percdamp,
        "checkpoint_format": "gptq",
        "lm_head": False,
        "meta": {"quantizer": ["course_lib.gptq"]},
    }
    if modules_in_block is not None:
        cfg["modules_in_block_to_quantize"] = modules_in_block
    return cfg


def _modules_in_block(model: nn.Module, report: GPTQReport) -> list[list[str]]:
    """The quantized layers of one block as relative names grouped like true-sequential; the same set
    must be quantized in every block (that is all the config can express)."""
    path, blocks, groups = find_blocks(model)
    per_block = [sorted(n[len(f"{path}.{i}."):] for n in report.results if n.startswith(f"{path}.{i}."))
                 for i in range(len(blocks))]
    if not per_block or any(p != per_block[0] for p in per_block) or not per_block[0]:
        raise ValueError("save_gptq_checkpoint: every decoder block must have the same layers quantized "
                         "(the checkpoint config names one set for all blocks).")
    keep = set(per_block[0])
    return [[n for n in grp if n in keep] for grp in groups if any(n in keep for n in grp)]


@torch.no_grad()
def save_gptq_checkpoint(model: nn.Module, report: GPTQReport, out_dir: str | Path, tokenizer=None) -> Path:
    """Write `model` (quantized by gptq_quantize_model, which produced `report`) to `out_dir` in the GPTQ
    ("gptq" v1) checkpoint format; returns the directory. Needs bits in (2, 4, 8)."""
    if not isinstance(report, GPTQReport) or not report.results:
        raise TypeError("save_gptq_checkpoint needs the GPTQReport returned by gptq_quantize_model(model, ...).")
    if report.bits not in PACK_BITS:
        raise ValueError(f"GPTQ checkpoints are written here for bits in {PACK_BITS}, the model was quantized to "
                         f"{report.bits} bits; quantize with bits=4 to export.")
    modules_in_block = _modules_in_block(model, report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tensors = float_tensors(model, set(report.results))
    for name, result in report.results.items():
        layer = model.get_submodule(name)
        q = QuantLinear.from_result(layer, result)
        if not torch.equal(q.dequantized_weight(layer.weight.dtype), layer.weight):
            raise ValueError(f"{name}: the model's weight is not the GPTQ result in the report (was the model changed "
                             f"after quantization, or quantized with float32 scales?); export right after "
                             f"gptq_quantize_model(..., scale_dtype=torch.float16).")
        for buf in ("qweight", "qzeros", "scales", "g_idx"):
            tensors[f"{name}.{buf}"] = getattr(q, buf).to("cpu").contiguous()
    write_checkpoint(model, tensors, quantization_config(report, modules_in_block), out, tokenizer)
    return out


def float_tensors(model: nn.Module, quantized: set[str]) -> dict[str, torch.Tensor]:
    """Every tensor of the state dict on CPU, except the ``weight`` of the layers named in `quantized`;
    tied tensors (e.g. lm_head = embed_tokens) once: transformers re-ties them at load."""
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for key, t in model.state_dict().items():
        if key.endswith(".weight") and key[: -len(".weight")] in quantized:
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen_storage:
            continue
        seen_storage.add(ptr)
        tensors[key] = t.detach().to("cpu").contiguous()
    return tensors


def write_checkpoint(model: nn.Module, tensors: dict[str, torch.Tensor], qconfig: dict, out: Path, tokenizer=None):
    """model.safetensors from `tensors`, config.json with `qconfig` as its quantization_config, the
    generation config and (if given) the tokenizer files."""
    from safetensors.torch import save_file

    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    config.quantization_config = qconfig
    config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def load_gptq_checkpoint(path: str | Path, *, dtype: torch.dtype = torch.float32, device_map: str = "cpu",
                         backend: str | None = None):
    """Load a GPTQ checkpoint with transformers (optimum + gptqmodel provide the GPTQ layers), in eval mode.

    backend: None lets GPTQModel choose (on CPU: TorchAtenLinear, which computes in bfloat16); "torch"
    picks TorchLinear, which dequantizes to float16 weights and stays closer to the float model."""
    import warnings

    from transformers import AutoModelForCausalLM, GPTQConfig

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(f"No config.json in {path}; write the checkpoint with save_gptq_checkpoint first.")
    qcfg = json.loads(config_file.read_text()).get("quantization_config", {})
    if qcfg.get("quant_method") != "gptq":
        raise ValueError(f"{path} has no GPTQ quantization_config in config.json; write it with save_gptq_checkpoint.")
    kwargs = {}
    if backend is not None:  # only loading attributes (the backend) are taken from a passed config
        kwargs["quantization_config"] = GPTQConfig(bits=qcfg["bits"], backend=backend)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*already has a `quantization_config` attribute.*")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, device_map=device_map, **kwargs)
    return model.eval()
