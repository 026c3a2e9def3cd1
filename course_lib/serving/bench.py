"""The serving benchmark (``python -m course_lib.bench serving``): the same seeded workload served five ways.

For each model:

1. a Poisson workload (spread-out prompt and output lengths) served by transformers' ``generate``
   one request at a time, by static batches, and by the course engine; the engine's throughput over
   one-at-a-time generate is the number to set beside the seed's "8x" and the vLLM paper's 2-4x;
2. a workload whose prompts share one system prompt, served by the engine with and without prefix caching;
3. the Poisson workload again with a KV cache too small for it, in BF16 and in FP8 (the same bytes);
4. (the bundled model only, which has a distilled draft) speculative decoding: acceptance rate,
   tokens per target pass, and time against plain greedy decoding with the same loop.

Engine runs are repeated (``repeats``) and the median and range of their throughput are recorded, so
that a ranking can be checked against the run-to-run spread.
"""

from __future__ import annotations

import time

import torch

from ..core.env import seed_everything
from ..core.results import save_result
from ..core.timing import device_slug
from .engine import Engine, EngineConfig
from .speculative import greedy_generate, speculative_generate
from .workload import make_workload, serve_engine, serve_sequential, serve_static

# Per model and device: the workload sizes and the engine's budgets. "rate" is in requests per second,
# chosen so that every server is busy for most of the run (arrivals outpace one-at-a-time generate).
SETTINGS = {
    ("course-model", "cpu"): dict(n=48, prompt=48, output=48, rate=40.0, static=8, seqs=48, tokens=512, blocks=512,
                                  shared=192, tight=96),
    ("smollm2-135m", "cpu"): dict(n=12, prompt=48, output=32, rate=8.0, static=4, seqs=16, tokens=256, blocks=128,
                                  shared=192, tight=40),
    ("course-model", "cuda"): dict(n=64, prompt=128, output=128, rate=100.0, static=16, seqs=64, tokens=2048,
                                   blocks=4096, shared=256, tight=256),
    ("smollm2-135m-shape", "cuda"): dict(n=48, prompt=128, output=128, rate=50.0, static=16, seqs=48, tokens=2048,
                                         blocks=4096, shared=512, tight=192),
    ("llama-1b-shape", "cuda"): dict(n=48, prompt=128, output=128, rate=50.0, static=16, seqs=48, tokens=2048,
                                     blocks=4096, shared=512, tight=192),
}


def random_model(fields: dict, device, dtype):
    """Random weights in a published shape (no download). Throughput depends on the bytes read per step,
    not on the values; the text is noise, and every request generates exactly its output length."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**fields, "max_position_embeddings": 4096}, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0)
    seed_everything(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def load(name: str, device: torch.device):
    """The bundled model, the real model, or a random-weight copy of a shape (its prompts cut by the course tokenizer)."""
    from ..kv.bench import LLAMA_1B_SHAPE
    from ..lm.models import load_model, load_tokenizer
    from ..memory.measure import SMOLLM2_SHAPE

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = {"llama-1b-shape": LLAMA_1B_SHAPE, "smollm2-135m-shape": SMOLLM2_SHAPE}
    if name in shapes:
        return random_model(shapes[name], device, dtype), load_tokenizer()
    return load_model(None if name == "course-model" else name, device=device, dtype=dtype)


def _engine(model, tok, s: dict, device: torch.device, **overrides) -> Engine:
    cfg = dict(num_blocks=s["blocks"], block_size=16, max_num_seqs=s["seqs"], max_num_batched_tokens=s["tokens"],
               max_model_len=s["max_len"], cuda_graphs=device.type == "cuda")
    cfg.update(overrides)
    return Engine(model, tok, EngineConfig(**cfg))


def _engine_runs(engine: Engine, workload, name: str, repeats: int) -> dict:
    """One untimed run (warm-up: kernels chosen, CUDA graphs captured), then `repeats` timed runs; the
    prefix cache is emptied before each, so no run reuses another's blocks. The median run by
    throughput, with the range of the repeats."""
    serve_engine(engine, workload, name=name)
    runs = []
    for _ in range(repeats):
        engine.blocks.reset_cache()
        runs.append(serve_engine(engine, workload, name=name).summary())
    tps = sorted(r["tokens/s"] for r in runs)
    best = sorted(runs, key=lambda r: r["tokens/s"])[len(runs) // 2]
    return {**best, "tokens/s min": tps[0], "tokens/s max": tps[-1], "repeats": repeats}


def bench_model(name: str, device: torch.device, *, repeats: int = 3, quick: bool = False) -> list[dict]:
    model, tok = load(name, device)
    s = dict(SETTINGS[(name, device.type)])
    s["max_len"] = min(s.get("max_len", 2048), model.config.max_position_embeddings)
    if quick:
        s.update(n=max(4, s["n"] // 4))
    rows = []
    wl = make_workload(tok, s["n"], prompt_mean=s["prompt"], output_mean=s["output"], rate=s["rate"],
                       max_prompt=4 * s["prompt"], max_output=4 * s["output"], seed=0, max_len=s["max_len"])
    serve_sequential(model, make_workload(tok, 2, prompt_mean=16, output_mean=8, seed=1))  # warm-up

    def add(workload: str, run: dict) -> None:
        rows.append({"model": name, "workload": workload, **run})

    add("poisson", {**serve_sequential(model, wl).summary(), "repeats": 1})
    add("poisson", {**serve_static(model, wl, s["static"]).summary(), "repeats": 1})
    if device.type == "cuda":
        add("poisson", _engine_runs(_engine(model, tok, s, device, cuda_graphs=False), wl,
                                    "course engine, eager", repeats))
    add("poisson", _engine_runs(_engine(model, tok, s, device), wl, "course engine", repeats))
    shared = make_workload(tok, s["n"], prompt_mean=s["prompt"] // 2, output_mean=s["output"] // 2, rate=s["rate"],
                           shared_prefix=s["shared"], max_prompt=2 * s["prompt"], max_output=2 * s["output"], seed=2,
                           max_len=s["max_len"])
    for caching in (False, True):
        label = "course engine, prefix caching" + ("" if caching else " off")
        add("shared prefix", _engine_runs(_engine(model, tok, s, device, enable_prefix_caching=caching), shared,
                                          label, repeats))
    kv_bytes = None
    for dtype in ("bfloat16", "fp8"):
        per_block = _engine(model, tok, s, device, num_blocks=1, kv_dtype=dtype,
                            cuda_graphs=False).runner.pool.nbytes()
        kv_bytes = kv_bytes or s["tight"] * per_block  # the BF16 cache gets `tight` blocks; FP8 the same bytes
        label = f"course engine, {dtype} KV cache, {kv_bytes / 2**20:.3g} MiB"
        engine = _engine(model, tok, s, device, kv_cache_bytes=kv_bytes, kv_dtype=dtype)
        run = _engine_runs(engine, wl, label, repeats)
        add("poisson, tight KV memory", {**run, "KV blocks": engine.num_blocks,
                                         "KV tokens": engine.num_blocks * engine.config.block_size})
    base = rows[0]["tokens/s"]
    for r in rows:
        if r["workload"].startswith("poisson"):
            r["x one-at-a-time"] = r["tokens/s"] / base
    del model
    return rows


def bench_speculative(device: torch.device, *, prompts: int = 8, new_tokens: int = 64, ks=(2, 3, 4, 6)) -> list[dict]:
    """The bundled model with chapter 08's distilled student as its draft (data/draft-model)."""
    from ..lm.models import load_model
    from ..lm.tokens import token_stream
    from .draft import load_draft

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    target, tok = load_model(device=device, dtype=dtype)
    draft = load_draft(device, dtype)
    stream = token_stream("validation", tok).tolist()
    cases = [stream[i * 997:i * 997 + 32] for i in range(prompts)]
    greedy_generate(target, cases[0], 8)
    speculative_generate(target, draft, cases[0], 8, k=2)

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    base = [timed(lambda: greedy_generate(target, p, new_tokens)) for p in cases]
    draft_alone = [timed(lambda: greedy_generate(draft, p, new_tokens))[1] for p in cases]
    rows = [{"method": "greedy, target alone", "k": 0, "acceptance": None, "tokens/pass": 1.0,
             "seconds": sum(t for _, t in base), "speedup": 1.0, "identical": True},
            {"method": "greedy, draft alone", "k": 0, "acceptance": None, "tokens/pass": 1.0,
             "seconds": sum(draft_alone), "speedup": sum(t for _, t in base) / sum(draft_alone), "identical": None}]
    for k in ks:
        runs = [timed(lambda: speculative_generate(target, draft, p, new_tokens, k=k)) for p in cases]
        proposed = sum(r.proposed for r, _ in runs)
        rows.append({"method": "speculative, greedy", "k": k,
                     "acceptance": sum(r.accepted for r, _ in runs) / proposed,
                     "tokens/pass": sum(len(r.tokens) for r, _ in runs) / sum(r.target_passes for r, _ in runs),
                     "seconds": sum(t for _, t in runs),
                     "speedup": sum(t for _, t in base) / sum(t for _, t in runs),
                     "identical": all(r.tokens == b.tokens for (r, _), (b, _) in zip(runs, base))})
    return rows


def record_serving(device: str = "cuda", models: list[str] | None = None, *, repeats: int = 3, quick: bool = False,
                   name: str | None = None, threads: int | None = None) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a GPU; use --device cpu here.")
    if threads:
        torch.set_num_threads(threads)
    models = models or ([m for (m, d) in SETTINGS if d == dev.type])
    rows = []
    for m in models:
        t = time.perf_counter()
        rows += bench_model(m, dev, repeats=repeats, quick=quick)
        print(f"{m}: {time.perf_counter() - t:.0f} s", flush=True)
    spec = bench_speculative(dev) if "course-model" in models else []  # the only model with a draft
    slug = device_slug() if dev.type == "cuda" else "cpu"
    name = name or f"{slug}_serving"
    engine_rows = [r for r in rows if r["server"] == "course engine"]
    path = save_result(
        name, rows,
        description=("Serving one seeded workload: transformers' generate one at a time, static batches, and the course "
                     "engine (continuous batching on a paged cache); prefix caching on a shared system prompt; BF16 vs FP8 "
                     "KV cache in the same bytes. Engine rows: median of the repeats, with the range of tokens/s."),
        command=f"python -m course_lib.bench serving --device {device}" + (f" --threads {threads}" if threads else ""),
        summary={"speculative": spec, "settings": {f"{m}/{d}": s for (m, d), s in SETTINGS.items()},
                 "engine x one-at-a-time": {r["model"]: r["x one-at-a-time"] for r in engine_rows},
                 "threads": torch.get_num_threads() if dev.type == "cpu" else None})
    return str(path)
