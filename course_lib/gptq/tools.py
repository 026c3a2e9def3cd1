"""GPTQ with real tools: GPTQModel and llm-compressor on the course model, and why not AutoGPTQ.

    run = quantize_with_gptqmodel(BUNDLED_DIR, "out/gptqmodel", calib)      # GPTQ format
    run = quantize_with_llmcompressor(BUNDLED_DIR, "out/llmc", calib)        # compressed-tensors
    model = load_quantized(run.out_dir)                                      # plain transformers
    rows = describe_autogptq_status()                                        # the seeds' AutoGPTQ

Both libraries run the same algorithm as ``course_lib.gptq`` (per layer, minimise
||W X - Q X||^2 column by column with the inverse Hessian H = 2 X X^T + damp * mean(diag H) I);
they differ in defaults and in the checkpoint they write:

* GPTQModel writes the GPTQ format: ``qweight`` (int32, 8 x 4-bit per word), ``scales``,
  ``qzeros``, ``g_idx``. transformers loads it through optimum + gptqmodel's CPU kernels.
* llm-compressor writes compressed-tensors ``pack-quantized``: ``weight_packed`` (int32) and
  ``weight_scale``. transformers loads it natively and, on CPU, dequantizes it to float weights.

"Act-order" has several spellings. GPTQModel ``desc_act=True`` processes columns by decreasing
diag(H) and stores a g_idx (the group of each column), so groups are scattered over the columns.
llm-compressor ``actorder="static"`` (alias "weight") and GPTQModel ``act_group_aware=True``
reorder too but keep groups contiguous, so no g_idx is needed at inference. llm-compressor's
``actorder="group"`` (the g_idx kind) was removed in compressed-tensors 0.19. llm-compressor
defaults to "static" and GPTQModel 7.6 to act_group_aware=True; here both default to off.
Library output (banners, progress bars, log lines) is captured into ``ToolRun.log``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from ..core.env import quiet_loggers
from .tools_status import AUTOGPTQ_STATUS, CHECKED_ON

__all__ = [
    "ToolRun", "SUPPORTED_BITS", "quantize_with_gptqmodel", "quantize_with_llmcompressor", "load_quantized",
    "checkpoint_summary", "score_run", "dir_size_bytes", "describe_autogptq_status",
]

SUPPORTED_BITS = (2, 3, 4, 8)  # what the GPTQ checkpoint format and transformers' GPTQConfig accept
EXTRA_HINT = "install the course's compression extra: pip install -e .[compress]"
ACTORDERS = (None, "static", "weight")  # "weight" is compressed-tensors' name for "static"

# Python loggers silenced (to ERROR) while a library runs; their handlers write to the real stderr.
QUIET_LOGGERS = ("transformers", "optimum", "accelerate", "bitsandbytes", "tokenicer", "gptqmodel",
                 "compressed_tensors", "datasets", "torch.fx", "torch._dynamo", "torch._inductor")
# loguru loggers (llm-compressor and compressed-tensors log through loguru, to stdout).
QUIET_LOGURU = ("llmcompressor", "compressed_tensors")


@dataclass(frozen=True)
class ToolRun:
    """One quantization job: where it wrote, how long it took and with what."""

    out_dir: Path
    seconds: float  # wall time of load + calibrate + quantize + save (library import excluded)
    library: str
    version: str
    settings: dict
    log: str = field(default="", repr=False)  # everything the library printed, for inspection


def _require(module: str, dist: str) -> str:
    """Import `module` (checking it is installed) and return the version of distribution `dist`."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{dist} is not installed ({exc}); {EXTRA_HINT}") from exc
    return metadata.version(dist)


def _loguru(enable: bool) -> None:
    """Turn llm-compressor's and compressed-tensors' loguru output on or off."""
    try:
        from loguru import logger
    except ImportError:
        return
    for name in QUIET_LOGURU:
        (logger.enable if enable else logger.disable)(name)


@contextlib.contextmanager
def _quiet():
    """Capture stdout/stderr, warnings and library logs; yields the StringIO that receives them.

    GPTQModel prints a banner, INFO lines and redrawn progress bars to stdout (and, in Jupyter,
    through IPython display updates, which nbval can't replay: LOGBAR_DISABLE_NOTEBOOK_DETECTION
    turns that off, set in course_lib.core.env); transformers' tqdm bars (widgets in Jupyter) are switched off. llm-compressor logs through loguru
    to the stdout it saw at import: those lines are switched off (call ``_loguru(False)`` again
    after importing it), and its sink is pointed back at the real stdout afterwards.
    """
    buffer = io.StringIO()
    had_llmcompressor = "llmcompressor" in sys.modules
    _loguru(False)
    from transformers.utils import logging as hf_logging  # its tqdm bars become widgets in Jupyter

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(record=True) as caught, quiet_loggers(*QUIET_LOGGERS), \
                contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("always")
            yield buffer
        buffer.writelines(f"warning: {w.category.__name__}: {w.message}\n" for w in caught)
    finally:
        if not had_llmcompressor and "llmcompressor" in sys.modules:  # imported in here: its sink is `buffer`
            from llmcompressor.logger import LOGGER_CONFIG, configure_logger

            configure_logger(LOGGER_CONFIG)
        _loguru(True)
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _check_settings(bits: int, group_size: int, calibration):
    """Validate the shared settings; return the calibration as a 2-D LongTensor (n, seq_len)."""
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS} (what the GPTQ checkpoint formats store), got {bits!r}.")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or not (group_size == -1 or group_size > 0):
        raise ValueError(f"group_size must be a positive int, or -1 for one scale per output channel, got {group_size!r}.")
    return check_tool_calibration(calibration)


def check_tool_calibration(calibration):
    """The calibration as a 2-D LongTensor (n_samples, seq_len) on CPU, for a library to read; or a clear error."""
    from ..lm.tokens import check_token_ids

    return check_token_ids(calibration).cpu()


def _check_dirs(model_dir, out_dir) -> tuple[Path, Path]:
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").exists():
        raise ValueError(f"{model_dir} is not a saved Hugging Face model (no config.json); give a local directory, "
                         "e.g. course_lib.lm.models.BUNDLED_DIR.")
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError("out_dir must differ from model_dir: the quantized checkpoint would overwrite the original.")
    out_dir.mkdir(parents=True, exist_ok=True)
    return model_dir, out_dir


def quantize_with_gptqmodel(model_dir, out_dir, calibration, *, bits: int = 4, group_size: int = 128,
                            desc_act: bool = False, sym: bool = True, damp_percent: float = 0.01,
                            act_group_aware: bool = False, dtype="auto") -> ToolRun:
    """GPTQ with GPTQModel (AutoGPTQ's successor), saved in the GPTQ format.

    desc_act=True is act-order with a g_idx; act_group_aware=True is GPTQModel's own
    group-aware reordering (its default for GPTQ; off here so that plain GPTQ is compared).
    Layers stay in memory (offload_to_disk=False): its default spills them to /tmp, which took
    38 s instead of 7 s for 16 x 128 calibration tokens on the course's 2-core machine.
    dtype: the dtype the model is loaded and calibrated in ("auto": the checkpoint's, bfloat16 for
    the bundled model; torch.float32 to match course_lib's default on CPU).
    """
    model_dir, out_dir = _check_dirs(model_dir, out_dir)
    calibration = _check_settings(bits, group_size, calibration)
    if desc_act and act_group_aware:
        raise ValueError("desc_act and act_group_aware are two alternative column orders; turn on at most one.")
    if not 0 < damp_percent < 1:
        raise ValueError(f"damp_percent must lie in (0, 1), got {damp_percent!r}.")
    settings = dict(bits=bits, group_size=group_size, desc_act=desc_act, sym=sym, damp_percent=damp_percent,
                    act_group_aware=act_group_aware, n_samples=calibration.shape[0], seq_len=calibration.shape[1],
                    dtype=str(dtype).replace("torch.", ""))
    with _quiet() as log:
        version = _require("gptqmodel", "gptqmodel")
        from gptqmodel import GPTQModel, QuantizeConfig
        from gptqmodel.looper import loop_processor

        # GPTQModel 7.6 appends a per-run log to ./logs/ under the current directory (a hard-coded
        # relative path): point it at a temporary directory so repositories stay clean.
        loop_processor._PROJECT_LOG_DIR = Path(tempfile.mkdtemp(prefix="gptqmodel_logs_"))

        config = QuantizeConfig(bits=bits, group_size=group_size, desc_act=desc_act, sym=sym,
                                damp_percent=damp_percent, act_group_aware=act_group_aware,
                                offload_to_disk=False)
        # One dict per sample, as its quantize() documents; no padding, so the mask is all ones.
        records = [{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in calibration]
        start = time.perf_counter()
        model = GPTQModel.load(str(model_dir), config, dtype=dtype)
        model.quantize(records, batch_size=1)
        model.save(str(out_dir))
        seconds = time.perf_counter() - start
    # GPTQModel 7.6 saves generation_config.json with do_sample=true ("auto-fixed"), which would turn
    # the original's greedy generate() into sampling; keep the original's file instead.
    if (model_dir / "generation_config.json").exists():
        shutil.copyfile(model_dir / "generation_config.json", out_dir / "generation_config.json")
    return ToolRun(out_dir, seconds, "gptqmodel", version, settings, log.getvalue())


def _scheme(bits: int, group_size: int, sym: bool, actorder: str | None):
    """compressed-tensors config group: int weights, per group (or per channel), no activations."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=sym,
                               strategy="channel" if group_size == -1 else "group",
                               group_size=None if group_size == -1 else group_size, actorder=actorder)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}


def quantize_with_llmcompressor(model_dir, out_dir, calibration, *, bits: int = 4, group_size: int = 128,
                                actorder: str | None = None, sym: bool = True,
                                dampening_frac: float = 0.01, dtype="auto") -> ToolRun:
    """GPTQ with llm-compressor's GPTQModifier via oneshot, saved as compressed-tensors.

    actorder: None (plain GPTQ) or "static"/"weight" (reorder, contiguous groups; llm-compressor's
    own default). "group" (reorder and store a g_idx) was removed in compressed-tensors 0.19.
    dtype: as for quantize_with_gptqmodel.
    """
    model_dir, out_dir = _check_dirs(model_dir, out_dir)
    calibration = _check_settings(bits, group_size, calibration)
    if actorder in ("group", "dynamic"):
        raise ValueError("compressed-tensors 0.19 removed actorder='group' (act-order stored with a g_idx); "
                         "use actorder='static' (same column order, contiguous groups) or None.")
    if actorder not in ACTORDERS:
        raise ValueError(f"actorder must be one of {ACTORDERS}, got {actorder!r}.")
    if not 0 < dampening_frac < 1:
        raise ValueError(f"dampening_frac must lie in (0, 1), got {dampening_frac!r}.")
    settings = dict(bits=bits, group_size=group_size, actorder=actorder, sym=sym, dampening_frac=dampening_frac,
                    n_samples=calibration.shape[0], seq_len=calibration.shape[1],
                    dtype=str(dtype).replace("torch.", ""))
    with _quiet() as log:
        version, dataset = llmcompressor_dataset(calibration)
        from llmcompressor import oneshot
        from llmcompressor.modifiers.gptq import GPTQModifier
        from transformers import AutoModelForCausalLM, AutoTokenizer

        recipe = GPTQModifier(config_groups=_scheme(bits, group_size, sym, actorder), ignore=["lm_head"],
                              actorder=actorder, dampening_frac=dampening_frac)
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=calibration.shape[0],
                max_seq_length=calibration.shape[1], shuffle_calibration_samples=False)
        model.save_pretrained(str(out_dir), save_compressed=True)
        seconds = time.perf_counter() - start
        if (model_dir / "tokenizer.json").exists() or (model_dir / "tokenizer_config.json").exists():
            AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out_dir))
    return ToolRun(out_dir, seconds, "llmcompressor", version, settings, log.getvalue())


def llmcompressor_dataset(calibration) -> tuple[str, object]:
    """(llm-compressor's version, the calibration token ids as an in-memory `datasets.Dataset`): nothing is
    downloaded. Importing llmcompressor switches its loguru output back on; this switches it off again."""
    version = _require("llmcompressor", "llmcompressor")
    _require("datasets", "datasets")
    from datasets import Dataset

    _loguru(False)
    return version, Dataset.from_dict({"input_ids": calibration.tolist(),
                                       "attention_mask": [[1] * calibration.shape[1]] * calibration.shape[0]})


def _quantization_config(out_dir: Path) -> dict:
    config_file = out_dir / "config.json"
    if not config_file.exists():
        raise ValueError(f"{out_dir} holds no saved model (no config.json).")
    qc = json.loads(config_file.read_text()).get("quantization_config")
    if not qc:
        raise ValueError(f"{out_dir} is not a quantized checkpoint (config.json has no quantization_config).")
    return qc


def load_quantized(out_dir, *, device: str = "cpu", dtype=None, backend: str | None = None):
    """Load a GPTQ, AWQ or compressed-tensors checkpoint with plain ``AutoModelForCausalLM.from_pretrained``.

    GPTQ format: needs optimum + gptqmodel; the Linear layers become gptqmodel kernels that keep
    the packed int words and dequantize inside each matmul (`backend` picks the kernel, e.g.
    "torch"; default: gptqmodel's choice). AWQ GEMM format (GPTQModel's or AutoAWQ's): the same
    with gptqmodel's AWQ kernels (`backend` e.g. "torch_awq"). compressed-tensors: native in
    transformers; it is dequantized once at load (``dequantize=True``) into float nn.Linear weights,
    which still lie on the 2^bits-level grid of each group; a scheme with input activations (W8A8)
    keeps rounding each Linear's input in its forward. dtype defaults to float32 (float32 logits).
    The model is returned in eval mode.
    """
    import torch

    out_dir = Path(out_dir)
    qc = _quantization_config(out_dir)
    method = qc.get("quant_method")
    with _quiet():
        from transformers import AutoModelForCausalLM

        kwargs = {}
        if method == "gptq":
            _require("optimum", "optimum")
            _require("gptqmodel", "gptqmodel")
            from transformers import GPTQConfig

            # gptqmodel's automatic CPU choice for 4 bits, TorchAtenLinear, calls torch's
            # _weight_int4pack_mm_cpu, which takes groups of 32, 64, 128 or 256 only: per-channel
            # checkpoints would fail at the first forward; the plain "torch" kernel takes any.
            if backend is None and str(device).startswith("cpu") and qc.get("bits") == 4 \
                    and qc.get("group_size") not in (32, 64, 128):
                backend = "torch"
            if backend is not None:
                kwargs["quantization_config"] = GPTQConfig(bits=qc["bits"], backend=backend)
            # The "torch" kernel torch.compiles its dequantize once per layer; clear dynamo's
            # cache so that loading several models does not run into its recompile limit.
            torch._dynamo.reset()
        elif method == "awq":
            _require("gptqmodel", "gptqmodel")
            from transformers import AwqConfig

            # Same limit as above: the automatic CPU kernels call _weight_int4pack_mm_cpu.
            if backend is None and str(device).startswith("cpu") and qc.get("group_size") not in (32, 64, 128):
                backend = "torch_awq"
            if backend is not None:
                kwargs["quantization_config"] = AwqConfig(bits=qc["bits"], group_size=qc["group_size"],
                                                          backend=backend)
            torch._dynamo.reset()  # its CPU kernels torch.compile too (see above)
        elif method == "compressed-tensors":
            _require("compressed_tensors", "compressed-tensors")
            from transformers import CompressedTensorsConfig

            if backend is not None:
                raise ValueError("backend applies to GPTQ-format checkpoints only; compressed-tensors loads natively.")
            kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
        else:
            raise ValueError(f"{out_dir}: quant_method {method!r} is none of 'gptq', 'awq', 'compressed-tensors'.")
        model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=dtype or torch.float32,
                                                     device_map=device, **kwargs)
    return model.eval()


def checkpoint_summary(out_dir) -> dict:
    """What the checkpoint stores: method, format, bits, group size (-1: one per output channel),
    symmetry, act-order, quantized input activations (e.g. "int8 token dynamic", or None) and its
    tensors by dtype."""
    from safetensors import safe_open

    out_dir = Path(out_dir)
    qc = _quantization_config(out_dir)
    activations = None
    if qc.get("quant_method") == "compressed-tensors":
        group_config = next(iter(qc["config_groups"].values()))
        weights, inputs = group_config["weights"], group_config.get("input_activations")
        bits, group, sym, order = weights["num_bits"], weights["group_size"], weights["symmetric"], weights["actorder"]
        if weights.get("strategy") == "channel":
            group = -1
        fmt_name = qc.get("format")
        if inputs:
            activations = f"{inputs['type']}{inputs['num_bits']} {inputs['strategy']} " \
                          f"{'dynamic' if inputs['dynamic'] else 'static'}"
    elif qc.get("quant_method") == "awq":  # GPTQModel's and AutoAWQ's keys
        bits, group, order = qc["bits"], qc["group_size"], qc.get("desc_act", False)
        sym = not qc.get("zero_point", True)
        fmt_name = qc.get("version") or qc.get("format")
    else:
        bits, group, sym, order = qc["bits"], qc["group_size"], qc.get("sym"), qc.get("desc_act")
        fmt_name = qc.get("checkpoint_format") or qc.get("format")
    tensors: dict[str, dict[str, int]] = {}  # suffix (qweight, scales, ...) -> {dtype: count}
    for file in sorted(out_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                dtype = str(f.get_slice(key).get_dtype())
                suffix = key.rsplit(".", 1)[-1]
                tensors.setdefault(suffix, {}).setdefault(dtype, 0)
                tensors[suffix][dtype] += 1
    return dict(method=qc["quant_method"], format=fmt_name, bits=bits, group_size=group, sym=sym,
                act_order=order, activations=activations, tensors=tensors)


def score_run(run: ToolRun, tokenizer, label: str | None = None) -> dict:
    """One JSON-ready row for a notebook: who quantized (label and version), the checkpoint's method and
    format, the FAST perplexity of the checkpoint loaded back with transformers, the tool's seconds and
    the bytes of its weights file(s)."""
    from ..lm.perplexity import perplexity

    summary = checkpoint_summary(run.out_dir)
    return {"quantized by": f"{label or run.library} {run.version}",
            "format": f"{summary['method']} / {summary['format']}",
            "perplexity": perplexity(load_quantized(run.out_dir), tokenizer).ppl, "seconds": run.seconds,
            "weights bytes": sum(p.stat().st_size for p in Path(run.out_dir).glob("*.safetensors"))}


def dir_size_bytes(path) -> int:
    """Bytes of all files under `path` (a checkpoint directory)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def describe_autogptq_status() -> list[dict]:
    """The evidence that the seeds' AutoGPTQ script can't run today: recorded rows, no network.

    Each row: what was checked, what was found (exact error text), the command that reproduces
    it, and the date it was checked (CHECKED_ON).
    """
    return [dict(row, checked=CHECKED_ON) for row in AUTOGPTQ_STATUS]
