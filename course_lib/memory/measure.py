"""The CUDA allocator's real peak against memory.estimate, on the course's GPU (``python -m course_lib.memory.measure``).

``measure_peak`` runs one transformers forward pass the way generate does (no grad, a DynamicCache,
SDPA) and reads ``torch.cuda.max_memory_allocated``: prefill of `context` tokens per row from an
empty cache, or one decode step after an unmeasured prefill. ``grid_rows`` does it for the
bundled model, the real SmolLM2-135M, and random-weight models in Llama-3.2-1B, -3B and Llama-3-8B
shapes, over dtypes, batches, contexts and phases, with the estimate's parts and its error.

On a CPU what can be measured honestly is the weights' and the cache's bytes (``parameter_bytes``,
``run_pass`` + kv.sizes.cache_tensor_bytes); tests/test_memory.py checks them against the estimate.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

from ..kv import sizes
from .estimate import GIB, estimate

LLAMA_3B_SHAPE = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                      num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
                      tie_word_embeddings=True, rope_parameters={"rope_theta": 500000.0, "rope_type": "default"})
# SmolLM2-135M-Instruct's architecture (the real model of the course), for a random-weight copy where its wheel
# is not installed: memory depends on shapes, not on values
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                     tie_word_embeddings=True, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"})
BATCHES = (1, 4, 16)
CONTEXTS = (128, 1024, 4096)
LIMIT_GIB = 120.0  # skip a combination whose estimate exceeds this (an H200 holds 139 GiB)


def parameter_bytes(model) -> int:
    """Bytes of the model's parameters (a tied embedding/lm_head is one parameter, counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def dtype_name(model) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


def random_ids(model, batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """Random token ids from a fixed seed, on the model's device."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, model.config.vocab_size, (batch, tokens), generator=g)
    return ids.to(next(model.parameters()).device)


def run_pass(model, *, batch: int, context: int, phase: str, logits: str = "last", before_step=None):
    """One forward pass as generate runs it; returns (output, cache).

    prefill: `context` tokens per row into an empty DynamicCache. decode: that prefill, then
    ``before_step()`` (where measure_peak resets the peak), then one token per row.
    """
    from transformers import DynamicCache

    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase must be 'prefill' or 'decode', not {phase!r}.")
    keep = 1 if logits == "last" else 0
    ids = random_ids(model, batch, context)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=keep if phase == "prefill" else 1)
        if phase == "decode":
            del out, ids
            ids = random_ids(model, batch, 1, seed=1)
            if before_step is not None:
                before_step()
            out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=keep)
    return out, cache


def measure_peak(model, *, batch: int, context: int, phase: str, logits: str = "last") -> dict:
    """Bytes allocated before, at the peak and after one pass on CUDA (see run_pass), and the cache's bytes."""
    from ..core.env import require_cuda

    require_cuda("measure_peak (the CUDA caching allocator's peak)")
    marks = {}

    def reset():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        marks["before"] = torch.cuda.memory_allocated()

    reset()
    out, cache = run_pass(model, batch=batch, context=context, phase=phase, logits=logits,
                          before_step=reset if phase == "decode" else None)
    torch.cuda.synchronize()
    result = {"peak": torch.cuda.max_memory_allocated(), "before": marks["before"],
              "after": torch.cuda.memory_allocated(), "cache": sizes.cache_tensor_bytes(cache)}
    del out, cache
    return result


def measure_fresh(points, *, dtype: str = "float16", timeout: float = 600) -> list[dict]:
    """measure_peak of the bundled model for (batch, context, phase) points in a fresh child process on CUDA.

    As the recorded grid did: in a notebook, tensors of earlier cells (and a cuBLAS workspace already made)
    sit in the allocator and would blur the peak. Returns one row per point with the estimate beside it.
    """
    import json
    import subprocess
    import sys

    from ..core.env import require_cuda

    require_cuda("measure_fresh (the CUDA caching allocator's peak)")
    script = (
        "import json, torch\n"
        "from course_lib.lm.models import load_model\n"
        "from course_lib.memory.measure import measure_peak\n"
        f"model = load_model(device='cuda', dtype=torch.{dtype})[0]\n"
        f"points = {[tuple(p) for p in points]!r}\n"
        "print(json.dumps([measure_peak(model, batch=b, context=c, phase=p)['peak'] for b, c, p in points]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError("The measurement's child process failed:\n" + done.stderr[-2000:])
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    from ..lm.models import load_model

    config = load_model(device="cpu")[0].config
    rows = []
    for (batch, context, phase), peak in zip(points, peaks):
        est = estimate(config, batch=batch, context=context, phase=phase, dtype=dtype).total_allocator
        rows.append({"batch": batch, "context": context, "phase": phase, "measured GiB": peak / GIB,
                     "estimate GiB": est / GIB, "error %": 100 * (est - peak) / peak})
    return rows


def sdpa_choice(model) -> str:
    """The SDPA backend PyTorch picks for this model's prefill call (torch._fused_sdp_choice), or '?'.

    The choice depends on dtype, head counts, head_dim and the causal flag, not on the lengths, so a
    small probe stands for every batch and context."""
    try:
        from torch.nn.attention import SDPBackend

        c = model.config
        d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        p = next(model.parameters())
        q = torch.empty(1, c.num_attention_heads, 16, d, device=p.device, dtype=p.dtype)
        k = torch.empty(1, c.num_key_value_heads, 16, d, device=p.device, dtype=p.dtype)
        gqa = c.num_attention_heads != c.num_key_value_heads
        index = torch._fused_sdp_choice(q, k, k, is_causal=True, enable_gqa=gqa)
        return SDPBackend(index).name
    except Exception:  # a private function: its signature may change
        return "?"


# ----------------------------------------------------------------------------- the grid

def _config(fields: dict):
    """A transformers config from a dict of published fields (the ones that describe the architecture)."""
    from transformers import AutoConfig

    fields = {k: v for k, v in fields.items() if not k.startswith("_") and k not in sizes.NOT_ARCHITECTURE}
    config = AutoConfig.for_model(fields.pop("model_type", "llama"), **fields)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 0, None, 0
    return config


def grid_configs() -> dict:
    """label -> config for the random-weight shapes of the grid (no weights, so it works on any machine)."""
    from ..kv.bench import LLAMA_1B_SHAPE

    return {"smollm2-135m-shape": _config(SMOLLM2_SHAPE), "smollm2-135m": _config(SMOLLM2_SHAPE),
            "llama-1b-shape": _config({**LLAMA_1B_SHAPE, "tie_word_embeddings": True}),
            "llama-3b-shape": _config(LLAMA_3B_SHAPE),
            "llama-3-8b-shape": _config(sizes.load_config("Meta-Llama-3-8B"))}


def _random_model(fields: dict, dtype: torch.dtype):
    """Random weights in a published shape, initialised on the GPU (no download; its tokens mean nothing)."""
    from transformers import AutoModelForCausalLM

    config = _config(fields)
    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()


def model_specs(quick: bool = False) -> list[tuple[str, object, bool]]:
    """(label, builder(dtype) -> model or None, small) for the grid. A builder returns None when it can't load."""
    from ..kv.bench import LLAMA_1B_SHAPE
    from ..lm.errors import ModelUnavailableError
    from ..lm.models import load_model

    def bundled(dtype):
        return load_model(device="cuda", dtype=dtype)[0]

    def smollm(dtype):
        try:
            return load_model("smollm2-135m", device="cuda", dtype=dtype)[0]
        except ModelUnavailableError as exc:
            print(f"skipping SmolLM2-135M: {str(exc).splitlines()[0]}")
            return None

    specs = [("course-model", bundled, True),
             ("llama-1b-shape", lambda dt: _random_model({**LLAMA_1B_SHAPE, "tie_word_embeddings": True}, dt), True)]
    if not quick:
        specs[1:1] = [("smollm2-135m", smollm, True),
                      ("smollm2-135m-shape", lambda dt: _random_model(SMOLLM2_SHAPE, dt), True)]
        specs += [("llama-3b-shape", lambda dt: _random_model(LLAMA_3B_SHAPE, dt), False),
                  ("llama-3-8b-shape", lambda dt: _random_model(sizes.load_config("Meta-Llama-3-8B"), dt), False)]
    return specs


def grid_rows(*, quick: bool = False, batches=BATCHES, contexts=CONTEXTS, phases=("prefill", "decode"),
              limit_gib: float = LIMIT_GIB, models=None) -> list[dict]:
    """Measured peak against the estimate for every model x dtype x batch x context x phase that fits.

    models: labels to keep (see ``model_specs``), or None for all."""
    from ..core.env import require_cuda

    require_cuda("The memory grid")
    if quick:
        batches, contexts = batches[:2], contexts[:2]
    rows = []
    specs = model_specs(quick)
    if models:
        unknown = set(models) - {label for label, _, _ in specs}
        if unknown:
            raise ValueError(f"Unknown grid model(s) {sorted(unknown)}; choose from {[label for label, _, _ in specs]}.")
        specs = [spec for spec in specs if spec[0] in models]
    for label, build, small in specs:
        dtypes = ([torch.float32] if small else []) + [torch.bfloat16, torch.float16]
        model = build(dtypes[0])
        if model is None:
            continue
        for dtype in dtypes:
            model = model.to(dtype)  # cast in place, parameter by parameter: built once per model
            for batch in batches:
                for context in contexts:
                    for phase in phases:
                        est = estimate(model.config, batch=batch, context=context, phase=phase, dtype=dtype)
                        if est.total_allocator > limit_gib * GIB:
                            continue
                        try:
                            m = measure_peak(model, batch=batch, context=context, phase=phase)
                        except torch.cuda.OutOfMemoryError:  # the estimate was too low: say so, go on
                            print(f"OOM: {label} {dtype} batch {batch} context {context} {phase}, estimated "
                                  f"{est.total_allocator / GIB:.1f} GiB")
                            gc.collect()
                            torch.cuda.empty_cache()
                            continue
                        rows.append({
                            "model": label, "dtype": str(dtype).replace("torch.", ""), "batch": batch,
                            "context": context, "phase": phase, "sdpa": sdpa_choice(model),
                            "measured GiB": m["peak"] / GIB, "estimate GiB": est.total_allocator / GIB,
                            "error %": 100 * (est.total_allocator - m["peak"]) / m["peak"],
                            "weights GiB": est.weights / GIB, "param GiB": parameter_bytes(model) / GIB,
                            "kv GiB": est.kv_cache / GIB, "cache GiB": m["cache"] / GIB,
                            "activations GiB": est.activations / GIB, "workspace GiB": est.workspace / GIB,
                            "before GiB": m["before"] / GIB, "after GiB": m["after"] / GIB,
                            "moment": est.moment, "backend": est.backend})
                        gc.collect()
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def recheck_recorded(rows: list[dict], configs: dict) -> list[dict]:
    """The recorded peaks against today's estimate: the GPU measured once, the estimate is recomputed here.

    configs: label -> transformers config for every model in `rows` (``grid_configs()`` plus the
    bundled and real models' own). Rows of a model without a config are left out.
    """
    out = []
    for r in rows:
        if r["model"] not in configs:
            continue
        est = estimate(configs[r["model"]], batch=r["batch"], context=r["context"], phase=r["phase"],
                       dtype=getattr(torch, r["dtype"]))
        out.append({**r, "recorded estimate GiB": r["estimate GiB"], "estimate GiB": est.total_allocator / GIB,
                    "error %": 100 * (est.total_allocator / GIB - r["measured GiB"]) / r["measured GiB"],
                    "moment": est.moment, "backend": est.backend})
    return out


def error_table(rows: list[dict]) -> list[dict]:
    """Per model and dtype: how many grid points, the median and worst |error| of the estimate, and the worst case."""
    out = []
    for key in dict.fromkeys((r["model"], r["dtype"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["dtype"]) == key]
        worst = max(mine, key=lambda r: abs(r["error %"]))
        out.append({"model": key[0], "dtype": key[1], "points": len(mine),
                    "median |error| %": statistics.median(abs(r["error %"]) for r in mine),
                    "worst error %": worst["error %"],
                    "worst at": f"batch {worst['batch']}, {worst['context']} tokens, {worst['phase']}"})
    return out


def summary(rows: list[dict]) -> dict:
    errors = [abs(r["error %"]) for r in rows]
    worst = max(rows, key=lambda r: abs(r["error %"]))
    return {"rows": len(rows), "median |error| %": statistics.median(errors), "worst |error| %": max(errors),
            "worst row": {k: worst[k] for k in ("model", "dtype", "batch", "context", "phase", "moment")},
            "within 5 %": sum(e <= 5 for e in errors)}


def record_memory(name: str | None = None, quick: bool = False, models=None) -> None:
    """Run the grid on this GPU and save data/results/<gpu>_memory.json (or `name`)."""
    from ..core.results import save_result
    from ..core.tables import print_table
    from ..core.timing import device_slug

    start = time.perf_counter()
    rows = grid_rows(quick=quick, models=models)
    if not rows:
        raise RuntimeError(f"No grid point was measured (models {models}): see the messages above.")
    name = name or f"{device_slug()}_memory" + ("_quick" if quick else "")
    info = summary(rows)
    info.update(seconds=time.perf_counter() - start, cudnn=torch.backends.cudnn.version())
    path = save_result(name, rows, command="python -m course_lib.memory.measure" + (" --quick" if quick else "")
                       + (f" --models {' '.join(models)}" if models else "") + f" --name {name}", summary=info,
                       description="peak of torch.cuda.max_memory_allocated over one no-grad forward (prefill of "
                       "`context` tokens into an empty DynamicCache, or one decode step after it; logits of the last "
                       "position) against course_lib.memory.estimate (weights + KV cache + activations + cuBLAS workspace)")
    print_table([{k: r[k] for k in ("model", "dtype", "batch", "context", "phase", "measured GiB", "estimate GiB",
                                    "error %", "moment")} for r in rows])
    print({k: v for k, v in info.items() if k != "worst row"}, info["worst row"])
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_lib.memory.measure", description=__doc__.split("\n")[0])
    parser.add_argument("--name", default=None, help="result name (default <gpu>_memory)")
    parser.add_argument("--quick", action="store_true", help="the bundled model and the 1B shape, small batches")
    parser.add_argument("--models", nargs="+", default=None, help="only these models of the grid, e.g. smollm2-135m")
    args = parser.parse_args(argv)
    record_memory(args.name, quick=args.quick, models=args.models)


if __name__ == "__main__":
    main()
