"""AWQ and SmoothQuant with real tools: GPTQModel, llm-compressor, and why not AutoAWQ.

    run = quantize_awq_with_gptqmodel(BUNDLED_DIR, "out/gm-awq", calib)        # AWQ GEMM format
    run = quantize_awq_with_llmcompressor(BUNDLED_DIR, "out/llmc-awq", calib)   # compressed-tensors
    run = smoothquant_w8a8_with_llmcompressor(BUNDLED_DIR, "out/sq", calib)     # W8A8, compressed-tensors
    model = load_quantized(run.out_dir)                                         # plain transformers
    rows = describe_autoawq_status()                                            # the seeds' AutoAWQ

Both AWQ implementations run the algorithm of ``course_lib.awq`` on the same scale groups
(input_layernorm -> q/k/v, v -> o, post_attention_layernorm -> gate/up, up -> down; v -> o is left
out under grouped-query attention, as the course model has 4 query but 2 key/value heads): per
group, s = x_mean^r / w_mean^(1-r) ("duo scaling") on a 20-point grid of r, keeping the s that
minimises ||Q(W diag(s)) diag(s)^-1 X - W X||^2 over the inspected module's output. They differ:

* GPTQModel (like AutoAWQ and the paper) then searches a clipping range per layer (not q/k) and
  writes the AWQ GEMM format: ``qweight``/``qzeros`` (int32, 8 x 4-bit per word) and 16-bit
  ``scales`` (bfloat16 here, float16 from AutoAWQ). It calibrates in bfloat16: in float32 on a
  CPU its 7.6 release corrupts the grid search (see TOOL_NOTES), and its AWQ packing kernels take
  float16/bfloat16 only.
* llm-compressor's AWQModifier only smooths; a QuantizationModifier then rounds (min-max per group)
  and the checkpoint is compressed-tensors ``pack-quantized`` (``weight_packed``, ``weight_scale``,
  ``weight_zero_point``). It has no clipping search. It needs a small patch to run without an
  accelerator (``_no_pinning_without_accelerator``).

SmoothQuant (W8A8) migrates activation outliers into the weights with s = max|X|^a / max|W|^(1-a)
per input channel (norm -> q/k/v and norm -> gate/up only), then GPTQ rounds the weights to int8 per
output channel; activations are quantized to int8 per token at run time (dynamic scales).
Library output is captured into ``ToolRun.log``; reload any of the checkpoints with ``load_quantized``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from pathlib import Path

from .tools_status import AUTOAWQ_STATUS, CHECKED_ON, SEED_CLAIMS, TOOL_NOTES
from ..gptq.tools import (ToolRun, _check_dirs, _check_settings, _loguru, _quiet, _require, _scheme, checkpoint_summary,
                          dir_size_bytes, load_quantized)

__all__ = [
    "ToolRun", "quantize_awq_with_gptqmodel", "quantize_awq_with_llmcompressor", "smoothquant_w8a8_with_llmcompressor",
    "llmcompressor_awq_mappings", "load_quantized", "checkpoint_summary", "dir_size_bytes",
    "describe_autoawq_status", "describe_tool_notes", "describe_seed_claims",
]

AWQ_GROUP_SIZES = (-1, 16, 32, 64, 128)  # what GPTQModel's AWQ packing kernel (AwqTorchLinear) accepts
GPTQMODEL_AWQ_DTYPES = ("bfloat16", "float16")
DUO_SCALING = (True, False, "both")  # llm-compressor: x and w statistics, x only, or half the grid each


def _dtype_name(dtype) -> str:
    """'float32' for torch.float32 or 'float32'; 'auto' stays 'auto'."""
    return str(dtype).replace("torch.", "")


def _torch_dtype(dtype):
    """A torch dtype (or 'auto') from a dtype or its name, for from_pretrained."""
    import torch

    name = _dtype_name(dtype)
    if name == "auto":
        return "auto"
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype (or its name), got {dtype!r}.")
    return value


def _calibration_dataset(calibration):
    """An in-memory, already tokenized datasets.Dataset: nothing is downloaded."""
    _require("datasets", "datasets")
    from datasets import Dataset

    n, seq_len = calibration.shape
    return Dataset.from_dict({"input_ids": calibration.tolist(), "attention_mask": [[1] * seq_len] * n})


def _copy_generation_config(model_dir: Path, out_dir: Path) -> None:
    # GPTQModel 7.6 saves generation_config.json with do_sample=true ("auto-fixed"), which would turn
    # the original's greedy generate() into sampling; keep the original's file instead.
    if (model_dir / "generation_config.json").exists():
        shutil.copyfile(model_dir / "generation_config.json", out_dir / "generation_config.json")


def _save_tokenizer(model_dir: Path, out_dir: Path) -> None:
    if (model_dir / "tokenizer.json").exists() or (model_dir / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out_dir))


def quantize_awq_with_gptqmodel(model_dir, out_dir, calibration, *, bits: int = 4, group_size: int = 128,
                                sym: bool = False, dtype="bfloat16") -> ToolRun:
    """AWQ with GPTQModel (scales, then clipping, then rounding), saved in the AWQ GEMM format.

    sym=False stores a zero point per group (AWQ's usual setting, "zero_point": true).
    dtype: bfloat16 (the bundled checkpoint's) or float16. float32 is refused: GPTQModel 7.6's
    scale search aliases its backup of float32 CPU weights (FAST perplexity 48.25 instead of
    44.68, see describe_tool_notes()) and its AWQ packing kernels take 16-bit dtypes only.
    Layers stay in memory; the run log is redirected; the original generation_config is kept.
    """
    model_dir, out_dir = _check_dirs(model_dir, out_dir)
    calibration = _check_settings(bits, group_size, calibration)
    if bits != 4:
        raise ValueError(f"The AWQ GEMM format stores 4-bit codes (8 per int32, in AWQ's interleaved order); "
                         f"got bits={bits!r}. Use bits=4, or quantize_awq_with_llmcompressor for other widths.")
    if group_size not in AWQ_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {AWQ_GROUP_SIZES} for GPTQModel's AWQ packing, got {group_size!r}.")
    if _dtype_name(dtype) not in GPTQMODEL_AWQ_DTYPES:
        raise ValueError(f"dtype must be one of {GPTQMODEL_AWQ_DTYPES} for GPTQModel's AWQ, got {dtype!r}: in float32 "
                         "on a CPU its 7.6 scale search overwrites its own backup of the weights, and its AWQ "
                         "packing kernels accept 16-bit dtypes only (see describe_tool_notes()).")
    dtype = _torch_dtype(dtype)
    settings = dict(bits=bits, group_size=group_size, sym=sym, n_samples=calibration.shape[0],
                    seq_len=calibration.shape[1], dtype=_dtype_name(dtype), duo_scaling=True, clip=True)
    with _quiet() as log:
        version = _require("gptqmodel", "gptqmodel")
        from gptqmodel import GPTQModel, QuantizeConfig
        from gptqmodel.looper import loop_processor
        from gptqmodel.utils.backend import BACKEND

        # GPTQModel appends a per-run log to ./logs/ (a hard-coded relative path): redirect it.
        loop_processor._PROJECT_LOG_DIR = Path(tempfile.mkdtemp(prefix="gptqmodel_logs_"))
        config = QuantizeConfig(bits=bits, group_size=group_size, sym=sym, method="awq", format="gemm",
                                offload_to_disk=False)  # keep layers in memory (its default spills to /tmp)
        records = [{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in calibration]
        start = time.perf_counter()
        model = GPTQModel.load(str(model_dir), config, dtype=dtype)
        # The packing kernel: its automatic choice for the GEMM format (AwqGEMMLinear) is CUDA-only;
        # AwqTorchLinear writes the same GEMM layout with plain torch ops, on any device.
        model.quantize(records, batch_size=1, backend=BACKEND.AWQ_TORCH)
        model.save(str(out_dir))
        seconds = time.perf_counter() - start
    _copy_generation_config(model_dir, out_dir)
    return ToolRun(out_dir, seconds, "gptqmodel", version, settings, log.getvalue())


@contextlib.contextmanager
def _no_pinning_without_accelerator():
    """While no accelerator is present, make llm-compressor's activation-cache pinning a no-op.

    What fails: before its grid search, AWQModifier._apply_smoothing pins every cached batch of
    the inspected module's inputs (IntermediatesCache.pin_memory -> Tensor.pin_memory()), and a
    CPU-only torch answers "RuntimeError: Cannot access accelerator device when none is available."
    Why skipping is safe: pinned (page-locked) host memory only makes later host-to-accelerator
    copies faster and asynchronous; without an accelerator every tensor stays in CPU memory and is
    used as it is, values unchanged. With an accelerator present nothing is patched.
    """
    import torch

    if torch.accelerator.is_available():
        yield
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def _oneshot(model_dir: Path, out_dir: Path, calibration, recipe, dtype) -> float:
    """Load in `dtype`, run llm-compressor's oneshot with `recipe`, save compressed; return seconds."""
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    dataset = _calibration_dataset(calibration)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=calibration.shape[0],
            max_seq_length=calibration.shape[1], shuffle_calibration_samples=False)
    model.save_pretrained(str(out_dir), save_compressed=True)
    return time.perf_counter() - start


def quantize_awq_with_llmcompressor(model_dir, out_dir, calibration, *, bits: int = 4, group_size: int = 128,
                                    sym: bool = False, duo_scaling: bool | str = True,
                                    dtype="float32") -> ToolRun:
    """AWQ with llm-compressor: AWQModifier (scales) + QuantizationModifier (rounding), via oneshot.

    Saved as compressed-tensors pack-quantized. duo_scaling: True (s from x and w statistics, its
    default and GPTQModel's), False (x only, the paper's first form) or "both" (half the grid each).
    The mappings come from llm-compressor's registry for the architecture
    (llmcompressor_awq_mappings shows them for a model). dtype: the calibration dtype.
    """
    model_dir, out_dir = _check_dirs(model_dir, out_dir)
    calibration = _check_settings(bits, group_size, calibration)
    if duo_scaling not in DUO_SCALING or isinstance(duo_scaling, int) and not isinstance(duo_scaling, bool):
        raise ValueError(f"duo_scaling must be one of {DUO_SCALING}, got {duo_scaling!r}.")
    dtype = _torch_dtype(dtype)
    settings = dict(bits=bits, group_size=group_size, sym=sym, duo_scaling=duo_scaling, clip=False,
                    n_samples=calibration.shape[0], seq_len=calibration.shape[1], dtype=_dtype_name(dtype))
    with _quiet() as log:
        version = _require("llmcompressor", "llmcompressor")
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier

        _loguru(False)  # importing llmcompressor switched its logger back on
        recipe = [AWQModifier(duo_scaling=duo_scaling),
                  QuantizationModifier(config_groups=_scheme(bits, group_size, sym, None), ignore=["lm_head"])]
        with _no_pinning_without_accelerator():
            seconds = _oneshot(model_dir, out_dir, calibration, recipe, dtype)
        _save_tokenizer(model_dir, out_dir)
    return ToolRun(out_dir, seconds, "llmcompressor", version, settings, log.getvalue())


def smoothquant_w8a8_with_llmcompressor(model_dir, out_dir, calibration, *, smoothing_strength: float | None = 0.8,
                                        dtype="float32") -> ToolRun:
    """SmoothQuant + GPTQ to W8A8 with llm-compressor (SmoothQuantModifier, GPTQModifier scheme "W8A8").

    Weights: int8, symmetric, one scale per output channel (GPTQ, llm-compressor's default static
    act-order). Activations: int8, symmetric, one scale per token computed at run time. Saved as
    compressed-tensors int-quantized. smoothing_strength is SmoothQuant's alpha in [0, 1]; None
    skips smoothing (plain W8A8, for comparison). Reloaded with load_quantized on a CPU, every
    quantized Linear rounds its input per token to int8 in its forward (fake quantization: the
    matmul runs in float32; vLLM would run it in int8).
    """
    model_dir, out_dir = _check_dirs(model_dir, out_dir)
    calibration = _check_settings(8, -1, calibration)
    if smoothing_strength is not None and (isinstance(smoothing_strength, bool)
                                           or not isinstance(smoothing_strength, (int, float))
                                           or not 0 <= smoothing_strength <= 1):
        raise ValueError(f"smoothing_strength (SmoothQuant's alpha) must lie in [0, 1], or be None to skip "
                         f"smoothing; got {smoothing_strength!r}.")
    dtype = _torch_dtype(dtype)
    settings = dict(smoothing_strength=smoothing_strength, scheme="W8A8", n_samples=calibration.shape[0],
                    seq_len=calibration.shape[1], dtype=_dtype_name(dtype))
    with _quiet() as log:
        version = _require("llmcompressor", "llmcompressor")
        from llmcompressor.modifiers.gptq import GPTQModifier
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        _loguru(False)
        recipe = [GPTQModifier(targets=["Linear"], scheme="W8A8", ignore=["lm_head"])]
        if smoothing_strength is not None:
            recipe.insert(0, SmoothQuantModifier(smoothing_strength=float(smoothing_strength)))
        seconds = _oneshot(model_dir, out_dir, calibration, recipe, dtype)
        _save_tokenizer(model_dir, out_dir)
    return ToolRun(out_dir, seconds, "llmcompressor", version, settings, log.getvalue())


def llmcompressor_awq_mappings(model_dir) -> list[dict]:
    """The AWQ scale groups llm-compressor uses for a model, resolved in its first decoder layer.

    One row per mapping of its registry: the smoothed module (absorbs 1/s), the balanced layers
    (multiplied by s), the module whose output the grid search compares ("inspect"), and whether it
    applies to this model (v -> o does not under grouped-query attention: v_proj has fewer outputs
    than o_proj has inputs).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise ValueError(f"{model_dir} is not a saved Hugging Face model (no config.json); give a local directory, "
                         "e.g. course_lib.lm.models.BUNDLED_DIR.")
    with _quiet():
        _require("llmcompressor", "llmcompressor")
        from compressed_tensors.utils import match_modules_set
        from llmcompressor.modifiers.transform.awq import get_layer_mappings_from_model
        from llmcompressor.modifiers.transform.awq.base import (_check_layers_are_compatible,
                                                                get_lowest_common_ancestor_with_avoid)
        from torch.nn import ModuleList
        from torch.utils._pytree import tree_leaves
        from transformers import AutoModelForCausalLM

        _loguru(False)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
        names = {module: name for name, module in model.named_modules()}
        rows = []
        for mapping in get_layer_mappings_from_model(model):
            # the first match is in the first decoder layer; resolved as AWQModifier does
            smooth, *balance = next(iter(match_modules_set(model, (mapping.smooth_layer, *mapping.balance_layers))))
            smooth, balance = smooth[0], tree_leaves(balance)
            balance_names = [names[m] for m in balance]
            parent, _ = get_lowest_common_ancestor_with_avoid(balance_names, model, ModuleList)
            applies = _check_layers_are_compatible(smooth, names[smooth], balance, balance_names)
            prefix = re.match(r"(.*?layers\.\d+\.)?", names[smooth]).group(0)  # "model.layers.0."
            rows.append(dict(smooth=names[smooth].removeprefix(prefix),
                             balance=tuple(n.removeprefix(prefix) for n in balance_names),
                             inspect=parent.removeprefix(prefix), applies=bool(applies)))
    return rows


def _rows(rows: list[dict]) -> list[dict]:
    """Copies of the rows, each with the date it was checked (its own, or CHECKED_ON)."""
    return [{"checked": CHECKED_ON, **row} for row in rows]


def describe_autoawq_status() -> list[dict]:
    """The evidence on the seeds' AutoAWQ scripts (seed 001 §1.3 script 2, seed 003 §6.2.6): recorded rows,
    no network.

    Each row: what was checked (topic), the finding in one line (short) and in full (exact error text),
    the command that reproduces it, and the date it was checked.
    """
    return _rows(AUTOAWQ_STATUS)


def describe_tool_notes() -> list[dict]:
    """What running the tools on the course's CPU machine showed (why awq_tools does what it does)."""
    return _rows(TOOL_NOTES)


def describe_seed_claims() -> list[dict]:
    """Seed 004's 'AWQ can't handle MoE' and 'GPTQ needs an NVIDIA 30-series GPU', checked."""
    return _rows(SEED_CLAIMS)
