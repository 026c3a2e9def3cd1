"""How much GPU memory does inference need? Weights + KV cache + activations + runtime overhead.

    peak (allocator) = weights + KV cache + live activations at the worst moment + cuBLAS workspace
    device memory    = peak + CUDA context (outside PyTorch's allocator, ~0.5 GB)

* weights: memory.shapes (parameter count by formula, plain dtypes or grouped integer quantization);
* KV cache: kv.sizes.kv_cache_bytes (2 x batch x layers x kv_heads x head_dim x tokens x bytes);
* activations: memory.activations, the tensors alive at each moment of a transformers 5.17 Llama
  forward pass (prefill: the MLP's three T x I intermediates or, with all logits, the T x vocab
  logits; decode: the cache's grow-by-copy);
* workspace: the cuBLAS workspace PyTorch allocates through its caching allocator on first matmul.

    est = estimate("Meta-Llama-3-8B", batch=1, context=8192, phase="prefill")
    est.gib()    # {'weights': 14.96, 'kv_cache': 1.0, 'activations': 0.6..., ...}

The estimate is of ``torch.cuda.max_memory_allocated`` (memory.measure checks it on a GPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..kv import sizes
from .activations import moments, sdpa_backend
from .shapes import DTYPE_BYTES, ModelShape, weight_bytes

GIB = 1024**3
GB = 1e9
COMPUTE_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}
PHASES = ("prefill", "decode")
LOGITS = ("last", "all")
# cuBLAS workspace, from PyTorch's aten/src/ATen/cuda/CublasHandlePool.cpp (parseChosenWorkspaceSize):
# ":4096:8" = 8 x 4096 KiB = 32 MiB on Hopper (sm_90: H100, H200), 4096 KiB x 2 + 16 KiB x 8 elsewhere.
# It is allocated through the caching allocator (getNewWorkspace), once per (handle, stream), so it
# counts in memory_allocated. cuBLASLt shares it (TORCH_CUBLASLT_UNIFIED_WORKSPACE, the default).
# CUBLAS_WORKSPACE_CONFIG overrides both.
CUBLAS_WORKSPACE_SM90 = 4096 * 8 * 1024
CUBLAS_WORKSPACE_OTHER = 4096 * 1024 * 2 + 16 * 1024 * 8
# The CUDA context (driver state, kernels of libtorch_cuda, cuBLAS/cuDNN handles): outside the
# allocator, seen only in nvidia-smi. About 0.5 GB; it varies with driver, CUDA version and GPU.
CUDA_CONTEXT_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of inference memory at the peak moment."""

    weights: float
    kv_cache: float
    activations: float
    workspace: float
    cuda_context: float
    moment: str = ""                 # the moment of the forward pass at which the peak falls
    backend: str = ""                # the SDPA kernel assumed (flash, efficient, math)
    detail: dict = field(default_factory=dict)   # the live activations at the peak, by name

    @property
    def total_allocator(self) -> float:
        """What torch.cuda.max_memory_allocated should read."""
        return self.weights + self.kv_cache + self.activations + self.workspace

    @property
    def total_device(self) -> float:
        """The allocator's peak plus the CUDA context: what the card must hold (before fragmentation)."""
        return self.total_allocator + self.cuda_context

    def bytes(self) -> dict[str, float]:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "activations": self.activations,
                "workspace": self.workspace, "total_allocator": self.total_allocator,
                "cuda_context": self.cuda_context, "total_device": self.total_device}

    def gib(self) -> dict[str, float]:
        return {k: v / GIB for k, v in self.bytes().items()}

    def gb(self) -> dict[str, float]:
        return {k: v / GB for k, v in self.bytes().items()}


def config_dict(config) -> dict:
    """A config as a dict: a stored name ("Meta-Llama-3-8B"), a dict, or a transformers PretrainedConfig."""
    if isinstance(config, str):
        return sizes.load_config(config)
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise ValueError(f"Pass a config as a stored name ({', '.join(sizes.available_configs())}), a dict or a "
                     f"transformers PretrainedConfig, not {type(config).__name__}.")


def _dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}.get(name, name)
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(COMPUTE_DTYPES)} (the dtype the model computes in), not {dtype!r}.")
    return name


def _kv_bytes(kv_dtype, default: int) -> float:
    if kv_dtype is None:
        return default
    if isinstance(kv_dtype, (int, float)) and not isinstance(kv_dtype, bool) and kv_dtype > 0:
        return float(kv_dtype)
    name = str(kv_dtype).replace("torch.", "").lower()
    if name in DTYPE_BYTES:
        return DTYPE_BYTES[name]
    raise ValueError(f"kv_dtype must be a dtype name ({', '.join(sorted(DTYPE_BYTES))}) or bytes per element "
                     f"(0.5 for a 4-bit cache), not {kv_dtype!r}.")


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 (e.g. {name}=1), not {value!r}.")
    return value


def kv_cache_bytes(config, *, batch: int, tokens: int, kv_dtype="float16") -> float:
    """The cache holding `tokens` tokens per sequence (kv.sizes.kv_cache_bytes; sliding windows applied)."""
    return sizes.kv_cache_bytes(config_dict(config), batch=batch, seq_len=tokens, bytes_per_element=_kv_bytes(kv_dtype, 2))


def estimate(config, *, batch: int, context: int, phase: str = "prefill", dtype="float16", weights=None,
             kv_dtype=None, logits: str = "last", workspace: float = CUBLAS_WORKSPACE_SM90,
             cuda_context: float = CUDA_CONTEXT_BYTES) -> MemoryEstimate:
    """Peak GPU memory of one transformers forward pass (no grad, SDPA, DynamicCache).

    phase "prefill": `context` tokens per sequence in one pass from an empty cache.
    phase "decode":  one token per sequence with `context` tokens already cached.
    dtype: what the model computes in; weights: how they are stored (default: dtype; see
    memory.shapes.weight_plan); kv_dtype: the cache's dtype (default: dtype); logits: "last"
    (logits_to_keep=1, as generate does) or "all".
    """
    cfg = config_dict(config)
    shape = ModelShape.from_config(cfg)
    _positive("batch", batch)
    _positive("context", context)
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, not {phase!r}.")
    if logits not in LOGITS:
        raise ValueError(f"logits must be 'last' (logits_to_keep=1, as generate does) or 'all', not {logits!r}.")
    name = _dtype_name(dtype)
    b = COMPUTE_DTYPES[name]
    kv_b = _kv_bytes(kv_dtype, b)
    w = weight_bytes(shape, name if weights is None else weights)
    kv_before = 0.0 if phase == "prefill" else sizes.kv_cache_bytes(cfg, batch=batch, seq_len=context,
                                                                     bytes_per_element=kv_b)
    kv_after = sizes.kv_cache_bytes(cfg, batch=batch, seq_len=context + (phase == "decode"), bytes_per_element=kv_b)
    windows = [x for x in sizes.layer_windows(cfg) if x]
    masked = phase == "prefill" and bool(windows) and context >= min(windows)  # transformers then builds a mask
    candidates = moments(shape, batch=batch, context=context, phase=phase, dtype_bytes=b, kv_bytes=kv_b,
                         kv_total=kv_after, kv_before=kv_before, logits=logits, masked=masked)
    peak = max(candidates, key=lambda m: m.total)
    # kv_cache is the cache at the end of the pass; a peak that falls before the last layer appended
    # holds less, which the detail shows as a negative entry so that the parts still add up.
    detail = dict(peak.live)
    if peak.cache != kv_after:
        detail["cache not yet grown at this moment"] = peak.cache - kv_after
    return MemoryEstimate(weights=w, kv_cache=kv_after, activations=sum(detail.values()), workspace=float(workspace),
                          cuda_context=float(cuda_context), moment=peak.name,
                          backend=sdpa_backend(shape, b, masked=masked), detail=detail)


def peak_over_phases(config, *, batch: int, context: int, **kwargs) -> MemoryEstimate:
    """The larger of the prefill of `context` tokens and a decode step at `context` (what serving needs)."""
    return max((estimate(config, batch=batch, context=context, phase=p, **kwargs) for p in PHASES),
               key=lambda e: e.total_allocator)


def breakdown_rows(est: MemoryEstimate, unit: float = GIB) -> list[dict]:
    """One row per part and per live activation at the peak, for course_lib.print_table."""
    rows = [{"part": k, "GiB" if unit == GIB else "bytes": v / unit} for k, v in est.bytes().items()]
    rows += [{"part": f"  activation: {k}", "GiB" if unit == GIB else "bytes": v / unit} for k, v in est.detail.items()]
    return rows
