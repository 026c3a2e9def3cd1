"""A mixed-precision allocation applied with GPTQ, saved as a checkpoint that transformers reloads.

    results = quantize_allocation(model, calibration, allocation)       # GPTQ, each layer at its own setting
    save_mixed_checkpoint(model, results, "out/mixed-4.0bpw", tokenizer=tok)
    reloaded = load_mixed_checkpoint("out/mixed-4.0bpw")                 # plain transformers

The format is compressed-tensors ``pack-quantized`` (what llm-compressor writes), with **one config group per
setting**: each group lists the layers it covers (``targets``) and its own ``num_bits`` and ``group_size``, so a
checkpoint can hold 3-bit and 5-bit layers side by side. The compressed-tensors library packs the codes
(``weight_packed``: int32 words, for any b in 1..8) and writes ``quantization_config``.

Which loaders take per-module bit widths:
* transformers (compressed-tensors, natively; any 1..8 bits per group) and vLLM read this checkpoint;
* the GPTQ format has one ``bits`` for the whole model in transformers 5.17 / optimum 2.3 (GPTQModel's own
  ``dynamic`` per-module overrides are not read by transformers' GPTQ loader);
* EXL2 files need ExLlamaV2 (CUDA only), GGUF files mix types per tensor and need llama.cpp or transformers'
  de-quantizing GGUF reader (``gguf_io``).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch
from torch import nn

from ..gptq.core import GPTQResult, gptq_quantize_weight
from ..gptq.model import layer_groups, sequential_layers
from .allocate import Allocation
from .sensitivity import Setting


@torch.no_grad()
def quantize_allocation(model: nn.Module, calibration: torch.Tensor, allocation: Allocation, *,
                        percdamp: float = 0.01, batch_size: int = 16, progress: bool = False,
                        device: torch.device | str | None = None) -> dict[str, GPTQResult]:
    """GPTQ over the model block by block (course_lib.gptq's sequential pipeline), each layer with the setting
    the allocation gives it; the model is fake-quantized in place (float weights on each layer's grid)."""
    if not isinstance(allocation, Allocation):
        raise TypeError("Pass an Allocation from course_lib.mixed.allocate(measurement, target_bpw).")
    path, blocks, groups = layer_groups(model)
    names = {f"{path}.{i}.{n}" for i in range(len(blocks)) for n in sum(groups, [])}
    if set(allocation.choice) != names:
        missing, extra = sorted(names - set(allocation.choice)), sorted(set(allocation.choice) - names)
        raise ValueError(f"The allocation does not match this model's layers (missing {missing[:3]}, unknown "
                         f"{extra[:3]}); measure and allocate on the same model.")
    results: dict[str, GPTQResult] = {}
    for job in sequential_layers(model, calibration, groups, batch_size=batch_size, device=device,
                                 progress=progress, desc="GPTQ (mixed) blocks"):
        s = allocation.choice[job.name]
        res = gptq_quantize_weight(job.layer.weight, job.H, s.bits, group_size=s.group_size, percdamp=percdamp,
                                   scale_dtype=torch.float16, name=job.name)
        job.layer.weight.copy_(res.qweight_float)
        results[job.name] = res.to(job.home)
    return results


def config_groups(results: dict[str, GPTQResult]) -> dict[Setting, list[str]]:
    """The layers of each setting, in layer order (a group as wide as the layer, which GPTQ reports as per-channel,
    is that group size)."""
    out: dict[Setting, list[str]] = {}
    for name, r in results.items():
        out.setdefault(Setting(r.bits, r.group_size or r.qweight_float.shape[1]), []).append(name)
    return dict(sorted(out.items()))


def _quantization_config(results: dict[str, GPTQResult]):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    groups = {}
    for k, (s, names) in enumerate(config_groups(results).items()):
        groups[f"group_{k}"] = QuantizationScheme(
            targets=[f"re:^{re.escape(n)}$" for n in names],
            weights=QuantizationArgs(num_bits=s.bits, type="int", symmetric=True, strategy="group",
                                     group_size=s.group_size, scale_dtype=torch.float16))
    return QuantizationConfig(config_groups=groups, ignore=["lm_head"], format="pack-quantized")


@torch.no_grad()
def save_mixed_checkpoint(model: nn.Module, results: dict[str, GPTQResult], out_dir: str | Path,
                          tokenizer=None) -> Path:
    """Write the fake-quantized `model` (from quantize_allocation, which returned `results`) as a compressed-tensors
    checkpoint with one config group per setting. The model itself is not changed (a copy is compressed)."""
    import copy

    from ..core.optional import missing, missing_line

    if missing("compressed_tensors"):
        raise ModuleNotFoundError(missing_line(["compressed_tensors"], "Saving a mixed-precision checkpoint"))
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationStatus, apply_quantization_config

    if not results or not all(isinstance(r, GPTQResult) for r in results.values()):
        raise TypeError("Pass the results returned by quantize_allocation(model, calibration, allocation).")
    for name, r in results.items():
        if r.perm is not None or not r.symmetric:
            raise ValueError(f"{name}: only symmetric GPTQ without act-order is written here.")
        if not torch.equal(model.get_submodule(name).weight.detach().cpu(), r.qweight_float.cpu()):
            raise ValueError(f"{name}: the model's weight is not the GPTQ result (was the model changed after "
                             f"quantize_allocation?).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = copy.deepcopy(model).cpu()
    qconfig = _quantization_config(results)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        apply_quantization_config(work, qconfig)
        for name, r in results.items():
            layer = work.get_submodule(name)
            layer.weight_scale.data.copy_(r.scales.to(layer.weight_scale.dtype))
            layer.weight_zero_point.data.zero_()
            layer.quantization_status = QuantizationStatus.FROZEN
        qconfig.quantization_status = QuantizationStatus.FROZEN
        compressor = ModelCompressor(quantization_config=qconfig)
        compressor.compress_model(work)
        for name in results:      # the scales are float16 numbers (scale_dtype above): store them as such
            layer = work.get_submodule(name)
            layer.weight_scale = nn.Parameter(layer.weight_scale.data.to(torch.float16), requires_grad=False)
        work.save_pretrained(out)
        compressor.update_config(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load_mixed_checkpoint(path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The checkpoint reloaded by transformers (compressed-tensors; de-quantized once at load)."""
    from ..gptq.tools import load_quantized

    return load_quantized(path, device=device, dtype=dtype)


def checkpoint_bits(path: str | Path) -> dict:
    """Bytes of the quantized layers' tensors in the checkpoint, and their bits per weight."""
    from safetensors import safe_open

    path = Path(path)
    stored = weights = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            keys = list(st.keys())
            for key in keys:
                if key.endswith(".weight_shape"):
                    base = key[: -len(".weight_shape")]
                    shape = st.get_tensor(key).tolist()
                    weights += shape[0] * shape[1]
                    for part in ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape"):
                        if f"{base}.{part}" in keys:
                            t = st.get_tensor(f"{base}.{part}")
                            stored += t.numel() * t.element_size()
    return {"weights": weights, "bytes": stored, "bpw": 8 * stored / weights if weights else float("nan")}
