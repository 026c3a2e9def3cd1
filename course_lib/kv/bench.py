"""Decode speed with and without the KV cache, and with a quantized cache (``python -m course_lib.bench kv-decode``).

Two benchmarks, one command:

* **CPU, the bundled model** (``--device cpu``, ``data/results/cpu_kv_decode.json``): greedy decoding
  from a 1-token prompt, every step timed (median of 3 runs per step, every 16th position kept), for
  ``hf cache`` / ``hf no cache`` (transformers with its DynamicCache, or recomputing everything with
  ``use_cache=False``) and ``course cache`` / ``course fp8`` / ``course int8`` (the from-scratch
  decoder with the plain or a quantized cache). On a CPU the work itself takes the time.
* **GPU, Llama-3.2-1B's shapes** (``--device cuda``, ``data/results/<gpu>_kv_decode.json``). Eager
  decoding of a small model on a GPU measures the host, not the GPU: Python and hundreds of kernel
  launches per step, which the GPU finishes faster than the CPU can issue them. So here each
  configuration is *one decode step at a given context* (``context`` tokens already cached), recorded
  once as a CUDA graph and replayed many times; the median replay is the GPU's time for that step.
  Modes: ``cache`` (a preallocated bf16 cache, ``kv.static``), ``cache fp8`` / ``cache int8`` (FP8
  E4M3 or INT8 codes, dequantized before attention: PyTorch has no attention kernel that reads them,
  so this is the memory saving's price without a fused kernel, not vLLM's speed) and ``no cache``
  (the whole prefix recomputed); attention is PyTorch's SDPA (flash backend, GQA without copying
  heads). A few ``cache`` rows run eagerly (``graph`` False) to show what the host adds.

``decode_fits`` fits time = a + b · context over all points of each configuration (least squares):
b is what each cached token costs per step, a what the step costs without context (the weights).
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from .attention import KVCache
from .decoder import CourseDecoder
from .generate import generate
from .quant import KVQuant, QuantizedCache
from .static import StaticKVCache

LLAMA_1B_SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
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


# ----------------------------------------------------------------------------- one step at a given context
STATIC_MODES = {"cache": "model", "cache fp8": "fp8", "cache int8": "int8", "no cache": None}
GPU_CONTEXTS = (512, 1024, 2048, 4096, 6144, 8192, 12288, 16384)
# (mode, batch, graph): what the GPU recording measures at every context of GPU_CONTEXTS
GPU_PLAN = tuple([(m, b, True) for m in ("cache", "cache fp8", "cache int8") for b in (1, 16, 64)]
                 + [("no cache", 1, True), ("no cache", 16, True), ("cache", 1, False), ("cache", 64, False)])


def sdpa_attention(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask) -> torch.Tensor:
    """The timed steps' attention (a CourseDecoder kv_hook): PyTorch's fused SDPA, GQA without copying heads.

    One new query (q_len 1) sees every cached key; a whole sequence (no cache) is causal. No padding here.
    """
    if key_mask is not None:
        raise ValueError("sdpa_attention is for unpadded batches; use the decoder's own attention with a mask.")
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=True)


def step_function(decoder: CourseDecoder, mode: str, batch: int, context: int, *, seed: int = 0):
    """A no-argument function running one greedy step that writes token `context` + 1: with a cache
    (``context`` tokens cached, in the mode's storage) or recomputing all `context` + 1 tokens."""
    if mode not in STATIC_MODES:
        raise ValueError(f"mode must be one of {tuple(STATIC_MODES)}, got {mode!r}.")
    weight = decoder.embed.weight
    cfg = decoder.config
    n_new = context + 1 if mode == "no cache" else 1
    ids = torch.randint(1, cfg.vocab_size, (batch, n_new), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(weight.device)
    if mode == "no cache":
        return lambda: decoder(ids, kv_hook=sdpa_attention, logits_to_keep=1).logits.argmax(-1)
    attn = decoder.blocks[0].attn
    cache = StaticKVCache(decoder.n_layers, batch=batch, n_kv_heads=attn.n_kv_heads, head_dim=attn.head_dim,
                          max_len=context + 1, dtype=weight.dtype, device=weight.device, storage=STATIC_MODES[mode])

    def step() -> torch.Tensor:
        cache.set_length(context)  # Python only: a CUDA graph replays the writes into slot `context`
        return decoder(ids, cache=cache, kv_hook=sdpa_attention, logits_to_keep=1).logits.argmax(-1)

    return step


def _sdpa_backend_context(device: torch.device):
    """On CUDA, SDPA restricted to the flash backend (fused, GQA-aware); elsewhere, PyTorch's choice."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


@torch.no_grad()
def time_step(step, device, *, graph: bool, budget_s: float = 0.5, min_reps: int = 5, max_reps: int = 200,
              warmup: int = 2) -> dict:
    """Median milliseconds of step() (and its quartiles) over as many repetitions as fit in `budget_s`,
    at least `min_reps`, after `warmup` untimed calls and one timed call that sets the count.
    graph=True (CUDA only) records step once as a CUDA graph and times replays: the GPU's time
    without the host's launch overhead."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if graph and not cuda:
        raise ValueError("CUDA graphs need a CUDA device; time CPU steps with graph=False.")
    run = step
    if graph:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the graph: kernels chosen, workspaces allocated
            for _ in range(warmup):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        run = g.replay

    def once() -> float:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) * 1e3

    if not graph:
        for _ in range(warmup):
            run()
    first = once()
    reps = max(min_reps, min(max_reps, int(budget_s * 1e3 / max(first, 1e-3))))
    samples = sorted(once() for _ in range(reps))
    q1, med, q3 = statistics.quantiles(samples, n=4) if reps > 1 else (samples[0],) * 3
    return {"ms": med, "ms_q1": q1, "ms_q3": q3, "reps": reps}


def static_step_rows(decoder: CourseDecoder, label: str, plan=GPU_PLAN, contexts=GPU_CONTEXTS, *,
                     budget_s: float = 0.5, min_reps: int = 5, verbose: bool = True) -> list[dict]:
    """Rows {model, mode, batch, graph, context, ms, ms_q1, ms_q3, reps, kv_bytes, sdpa}: one step per context.

    plan: (mode, batch, graph) triples. kv_bytes: the keys and values cached for that step, as stored.
    sdpa: the attention backend ("flash" on CUDA unless it failed, then PyTorch's "default").
    """
    device = decoder.embed.weight.device
    rows = []
    for mode, batch, graph in plan:
        t0 = time.perf_counter()
        for context in contexts:
            step = step_function(decoder, mode, batch, context)
            sdpa = "flash" if device.type == "cuda" else "default"
            try:
                with _sdpa_backend_context(device):
                    timing = time_step(step, device, graph=graph, budget_s=budget_s, min_reps=min_reps)
            except RuntimeError as exc:  # no flash kernel for this case: PyTorch's own choice, and say so
                if sdpa != "flash":
                    raise
                print(f"  flash SDPA failed ({str(exc).splitlines()[0][:120]}); default backend", flush=True)
                step, sdpa = step_function(decoder, mode, batch, context), "default"
                timing = time_step(step, device, graph=graph, budget_s=budget_s, min_reps=min_reps)
            rows.append({"model": label, "mode": mode, "batch": batch, "graph": graph, "context": context, **timing,
                         "kv_bytes": kv_bytes(decoder.config, batch, context, STATIC_MODES[mode]), "sdpa": sdpa})
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()  # each graph keeps its own memory pool; free it before the next
        if verbose:
            print(f"  {label} {mode} batch {batch} graph {graph}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def kv_bytes(config, batch: int, context: int, storage: str | None, model_bytes: int = 2) -> int:
    """Bytes of the keys and values of `context` tokens, as a StaticKVCache of that storage holds them
    (None: no cache, 0 bytes). model: `model_bytes` per number; fp8: 1; int8: 1 + a 2-byte scale per
    token and head."""
    if storage is None:
        return 0
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    numbers = 2 * config.num_hidden_layers * batch * heads * context * head_dim
    per = {"model": model_bytes, "fp8": 1, "int8": 1}[storage]
    extra = 2 * config.num_hidden_layers * batch * heads * context * 2 if storage == "int8" else 0
    return numbers * per + extra


# ----------------------------------------------------------------------------- straight-line fits
def fit_line(x: list[float], y: list[float]) -> dict:
    """Least squares y = a + b·x over all points: intercept a, slope b, its standard error, and R²."""
    n = len(x)
    if n < 3 or len(y) != n:
        raise ValueError(f"A line through fewer than 3 points has no spread to report; got {n} x and {len(y)} y.")
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((xi - mx) ** 2 for xi in x)
    if sxx == 0:
        raise ValueError("All x values are equal; a slope needs at least two different x.")
    b = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y)) / sxx
    a = my - b * mx
    ss_res = sum((yi - a - b * xi) ** 2 for xi, yi in zip(x, y))
    ss_tot = sum((yi - my) ** 2 for yi in y)
    return {"a": a, "b": b, "b_se": math.sqrt(ss_res / (n - 2) / sxx), "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def decode_fits(rows: list[dict], per_tokens: int = 1000) -> list[dict]:
    """One fit of ms = a + b · context per (model, mode, batch, graph) over all its rows.

    CPU rows carry the position written; the step that writes position p has p - 1 tokens cached.
    Columns: points, "ms at 0" (a), "ms per 1k" (b, per `per_tokens` tokens of context), its standard
    error, and R².
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["mode"], r["batch"], r.get("graph")), []).append(r)
    out = []
    for (model, mode, batch, graph), sel in groups.items():
        x = [r["context"] if "context" in r else r["position"] - 1 for r in sel]
        f = fit_line(x, [r["ms"] for r in sel])
        row = {"model": model, "mode": mode, "batch": batch}
        if graph is not None:
            row["graph"] = graph
        row.update({"points": len(sel), "ms at 0": f["a"], "ms per 1k": f["b"] * per_tokens,
                    "± per 1k": f["b_se"] * per_tokens, "R²": f["r2"]})
        out.append(row)
    return out


# ----------------------------------------------------------------------------- recording
def record_kv_decode(name: str | None = None, *, device: str = "cuda", threads: int | None = None,
                     model: str | None = None) -> None:
    """Record decode step times: the bundled model eagerly on the CPU ("course-model", the default there),
    Llama-3.2-1B's shapes as CUDA graphs on a GPU ("llama-1b-shape", the default there), or a tiny
    random model through the GPU benchmark's code at toy sizes ("tiny", a smoke test on either device)."""
    from ..core.env import require_cuda
    from ..lm.models import tiny_model
    from ..core.results import save_result

    model = model or ("llama-1b-shape" if device == "cuda" else "course-model")
    if model not in ("course-model", "llama-1b-shape", "tiny") or device not in ("cpu", "cuda"):
        raise ValueError(f"model must be 'course-model', 'llama-1b-shape' or 'tiny' and device 'cpu' or 'cuda'; "
                         f"got {model!r} on {device!r}.")
    if device == "cuda" or model == "llama-1b-shape":
        require_cuda(f"The KV-cache decode benchmark of {model} (CUDA graphs)")
    if model == "course-model" and device == "cuda":
        raise ValueError("On a GPU the bundled model (17 MB, held in L2) measures launch overhead only; "
                         "record --model llama-1b-shape there.")
    if threads:
        torch.set_num_threads(threads)
    if device == "cuda":
        from ..core.timing import device_slug

        prefix = device_slug()
    else:
        prefix = "cpu"
    name = name or f"{prefix}_kv_decode" + ("_smoke" if model == "tiny" else "")
    command = (f"python -m course_lib.bench kv-decode --device {device} --model {model}"
               + (f" --threads {threads}" if threads else "") + f" --name {name}")
    start = time.perf_counter()
    if model == "course-model":
        _record_cpu_eager(name, command)
        return
    if model == "tiny":
        net = tiny_model("llama").to(device)
        if device == "cuda":
            net = net.to(torch.bfloat16)
        plan = [(m, b, device == "cuda") for m in STATIC_MODES for b in (1, 4)]
        plan += [("cache", 1, False)] if device == "cuda" else []
        contexts, budget, min_reps = (16, 32, 64, 128), 0.05, 3
    else:
        net = llama_1b_shape("cuda", torch.bfloat16)
        plan, contexts, budget, min_reps = GPU_PLAN, GPU_CONTEXTS, 0.5, 5
    decoder = CourseDecoder.from_hf(net)
    summary = {"dtype": str(decoder.embed.weight.dtype).replace("torch.", ""),
               "weight_bytes": sum(p.numel() * p.element_size() for p in net.parameters()),
               "kv_bytes_per_token": kv_bytes(decoder.config, 1, 1, "model"), "contexts": list(contexts),
               "attention": "torch SDPA, flash backend on CUDA (enable_gqa), see each row's sdpa"}
    if device == "cuda":
        from ..core.timing import copy_bandwidth_gbps

        summary["copy_gbps"] = copy_bandwidth_gbps(torch.device("cuda"), nbytes=1 << 30)
    rows: list[dict] = []
    for item in plan:  # saved after each, so a run cut short keeps what it measured
        rows += static_step_rows(decoder, model, [item], contexts, budget_s=budget, min_reps=min_reps)
        summary.update(fits=decode_fits(rows), seconds=time.perf_counter() - start)
        path = save_result(name, rows, description="one greedy decode step at a given context (tokens already "
                           "cached), timed as CUDA-graph replays (graph True; eager otherwise), median over "
                           "repetitions: bf16 cache, FP8/INT8 caches dequantized before SDPA (no fused kernel), and "
                           "no cache (the prefix recomputed)", summary=summary, command=command)
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")
    for row in summary["fits"]:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})


def _record_cpu_eager(name: str, command: str) -> None:
    """The CPU recording: the bundled model, eager per-step generation, median of 3 runs per step."""
    from ..lm.models import load_model
    from ..core.results import save_result

    small, _ = load_model(device="cpu", dtype=torch.float32)
    t0 = time.perf_counter()
    rows = decode_step_rows(small, "course-model", steps=511, batch=1, repeats=3)
    summary = {"threads": torch.get_num_threads(), "dtype": "float32", "modes": summary_rows(rows)}
    path = save_result(name, rows, description="greedy decode from a 1-token prompt, time of each step (median "
                       "of repeats) against the position it writes: with and without the KV cache, and with "
                       "FP8/INT8 caches that dequantize before attention (no fused kernel)",
                       summary=summary, command=command)
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
    for row in summary["modes"]:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
