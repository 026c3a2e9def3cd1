"""Decode speed with and without the KV cache, and with a quantized cache (``python -m course_lib.bench kv-decode``).

Each configuration generates greedily from a 1-token prompt and times every step (CUDA-synchronised
on a GPU); the median over repeats is kept for every `every`-th position. Configurations:

* ``hf cache`` / ``hf no cache``: the transformers model with its DynamicCache, or recomputing all
  tokens at every step (``use_cache=False``);
* ``course cache`` / ``course fp8`` / ``course int8``: the from-scratch decoder with the plain cache
  or a quantized one. The quantized caches store FP8/INT8 codes and dequantize the whole cache
  before attention at every step: PyTorch has no attention kernel that reads FP8 keys, so this
  measures the memory saving's price without a fused kernel, not vLLM's speed.

Models: the bundled course model, and on a GPU (profile "large") a randomly initialised model with
Llama-3.2-1B's shapes, large enough for the O(n²) recomputation to show.
"""

from __future__ import annotations

import statistics
import time

import torch

from .attention import KVCache
from .decoder import CourseDecoder
from .generate import generate
from .quant import KVQuant, QuantizedCache

LLAMA_1B_SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=4096,
                      rope_parameters={"rope_theta": 500000.0, "rope_type": "default"})


def llama_1b_shape(device, dtype, seed: int = 0):
    """Random weights in Llama-3.2-1B's shapes (no download); for timing only, its tokens mean nothing."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(**LLAMA_1B_SHAPE, bos_token_id=0, eos_token_id=None, pad_token_id=0, tie_word_embeddings=True)
    with torch.device(device):  # initialise on the GPU: 1.2B parameters take minutes on a CPU
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()


def _modes(model):
    dec = CourseDecoder.from_hf(model)
    n = dec.n_layers
    return {
        "hf cache": (model, True, None),
        "hf no cache": (model, False, None),
        "course cache": (dec, True, lambda: KVCache(n)),
        "course fp8": (dec, True, lambda: QuantizedCache(KVQuant("fp8"), n)),
        "course int8": (dec, True, lambda: QuantizedCache(KVQuant("int8"), n)),
    }


def decode_step_rows(model, label: str, *, steps: int, batch: int = 1, repeats: int = 3, every: int = 16,
                     modes: tuple[str, ...] | None = None) -> list[dict]:
    """Rows {model, mode, batch, position, ms}: the median time of the step that writes token `position`."""
    device = next(model.parameters()).device
    prompt = torch.ones(batch, 1, dtype=torch.long, device=device)
    rows = []
    for mode, (m, use_cache, factory) in _modes(model).items():
        if modes and mode not in modes:
            continue
        t0 = time.perf_counter()
        generate(m, prompt, min(steps, 8), use_cache=use_cache, cache_factory=factory)  # warm-up
        runs = [generate(m, prompt, steps, use_cache=use_cache, cache_factory=factory, time_steps=True).step_seconds
                for _ in range(repeats)]
        for i in range(1, steps):  # step i writes the token at position i + 1 (step 0 is the 1-token prefill)
            if i % every == 0 or i == steps - 1:
                rows.append({"model": label, "mode": mode, "batch": batch, "position": i + 1,
                             "ms": statistics.median(r[i] for r in runs) * 1e3})
        print(f"  {label} batch {batch} {mode}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per model, batch and mode: first and last step's ms, and the last over the first."""
    out = []
    keys = sorted({(r["model"], r["batch"], r["mode"]) for r in rows}, key=str)
    for model, batch, mode in keys:
        sel = sorted((r for r in rows if (r["model"], r["batch"], r["mode"]) == (model, batch, mode)),
                     key=lambda r: r["position"])
        out.append({"model": model, "batch": batch, "mode": mode, "first ms": sel[0]["ms"], "last ms": sel[-1]["ms"],
                    "last position": sel[-1]["position"], "last/first": sel[-1]["ms"] / sel[0]["ms"]})
    return out


def record_kv_decode(name: str | None = None, *, device: str = "cuda", threads: int | None = None,
                     model: str = "course-model") -> None:
    """Record decode step times for the bundled model ("course-model") or, on a GPU, "llama-1b-shape"."""
    from ..env import require_cuda
    from ..models import load_model
    from ..results import save_result

    if device == "cuda":
        require_cuda("The KV-cache decode benchmark")
        from ..bench import device_slug

        name = name or f"{device_slug()}_kv_decode" + ("" if model == "course-model" else "_" + model.split("-")[1])
    else:
        if threads:
            torch.set_num_threads(threads)
        name = name or "cpu_kv_decode"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if model == "llama-1b-shape":
        require_cuda("The llama-1b-shape decode benchmark")
        big = llama_1b_shape(device, dtype)
        jobs = [lambda mode=mode: decode_step_rows(big, model, steps=1024, batch=1, repeats=1, every=32, modes=(mode,))
                for mode in ("hf cache", "hf no cache", "course cache", "course fp8")]
    elif model == "course-model":
        small, _ = load_model(device=device, dtype=dtype)
        jobs = [lambda: decode_step_rows(small, model, steps=511, batch=1, repeats=3)]
        if device == "cuda":
            jobs.append(lambda: decode_step_rows(small, model, steps=511, batch=64, repeats=2,
                                                 modes=("hf cache", "hf no cache", "course cache", "course fp8")))
    else:
        raise ValueError(f"model must be 'course-model' or 'llama-1b-shape', got {model!r}.")
    rows: list[dict] = []
    command = (f"python -m course_lib.bench kv-decode --device {device} --model {model}"
               + (f" --threads {threads}" if threads else "") + f" --name {name}")
    for job in jobs:  # saved after every job, so a run cut short still leaves its rows
        t0 = time.perf_counter()
        rows += job()
        summary = {"threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", ""),
                   "modes": summary_rows(rows)}
        path = save_result(name, rows, description="greedy decode from a 1-token prompt, time of each step (median "
                           "of repeats) against the position it writes: with and without the KV cache, and with "
                           "FP8/INT8 caches that dequantize before attention (no fused kernel)",
                           summary=summary, command=command)
        print(f"job done in {time.perf_counter() - t0:.0f} s; rows so far {len(rows)}", flush=True)
    print(f"wrote {path}")
    for row in summary["modes"]:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
