"""Benchmarks whose results are committed under data/results/ (``make bench`` runs the GPU ones).

    python -m course_lib.bench roofline [--name h100_roofline]
    python -m course_lib.bench prefill-decode [--name h100_prefill_decode]
    python -m course_lib.bench gptq-time [--device cpu|cuda] [--tools ...] [--bits 4 3] [--threads 2]
    python -m course_lib.bench awq-time [--device cpu|cuda] [--tools ...] [--bits 4] [--threads 2]
    python -m course_lib.bench gptq-grids [--seeds 0 1 2 3 4] [--bits 4] [--threads 1]  (CPU: chapter 03's RTN grids)
    python -m course_lib.bench qat-control [--lrs 5e-4 1e-4 3e-5 1e-5] [--threads 1]  (CPU: chapter 02's QAT control)
    python -m course_lib.bench awq-seeds [--seeds 0 1 2 3 4] [--bits 4 3] [--eval-tokens 8192 16384]  (CPU: ch. 04)
    python -m course_lib.bench kv-decode [--device cpu|cuda] [--model tiny] [--threads 2] [--name ...]
    python -m course_lib.bench attention [--name ...] [--tune quick|full] [--smoke]
    python -m course_lib.bench dequant-matmul [--name ...]   (chapter 11, planned: the PyTorch baseline)
    python -m course_lib.bench sparse24 [--name ...]
    python -m course_lib.bench prune-sweep [--threads 1] [--name ...]     (CPU: chapter 07's perplexity sweep)
    python -m course_lib.bench distill [--profile large] [--part all|white|extras|encoder|seeds] [--name ...]  (chapter 08)

Timing follows the usual GPU rules: warm-up first, CUDA events around many repetitions, the
median reported, and enough distinct weight matrices in rotation that the 50 MB L2 cache of an
H100 cannot hold them, so the numbers reflect HBM and not the cache.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from .env import require_cuda
from .roofline import linear_bytes, linear_flops
from .results import save_result

LLAMA7B_MLP = (4096, 11008)  # (k, n) of Llama-2-7B's gate/up projection
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def _timer(device):
    """Return a function that times fn() in seconds on `device` (CUDA events or perf_counter)."""
    import torch

    if device.type == "cuda":
        def time_cuda(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3
        return time_cuda

    def time_cpu(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return time_cpu


def median_time(fn, device, reps: int = 30, warmup: int = 5, inner: int = 1) -> float:
    """Median seconds of one call of fn, over `reps` samples of `inner` calls each."""
    timer = _timer(device)

    def block() -> None:
        for _ in range(inner):
            fn()

    for _ in range(warmup):
        block()
    return statistics.median(timer(block) for _ in range(reps)) / inner


def best_of_interleaved(fns: dict, repeats: int = 5, warmup: int = 1, device=None) -> dict[str, float]:
    """Best wall time (seconds) of each fn() over `repeats` rounds; every round runs each fn once in turn.

    Interleaving makes a slow patch of a shared machine hurt every candidate alike, and the best of
    several rounds drops the interruptions. device: a CUDA device to synchronize around each call.
    """
    import torch

    if not fns or repeats < 1:
        raise ValueError("best_of_interleaved needs at least one function and repeats >= 1.")
    cuda = device is not None and torch.device(device).type == "cuda"

    def once(fn) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], once(fn))
    return best


def linear_roofline(
    device,
    *,
    k: int = LLAMA7B_MLP[0],
    n: int = LLAMA7B_MLP[1],
    tokens: tuple[int, ...] = TOKENS,
    dtype=None,
    n_weights: int = 4,
    reps: int = 30,
) -> list[dict]:
    """Time y = x Wᵀ for W of shape (n, k) and m = tokens rows: decode (m=1) up to prefill (m large)."""
    import torch

    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    elt = torch.tensor([], dtype=dtype).element_size()
    gen = torch.Generator(device="cpu").manual_seed(0)
    weights = [(torch.randn(n, k, generator=gen) / k**0.5).to(device, dtype) for _ in range(n_weights)]
    rows = []
    for m in tokens:
        x = torch.randn(m, k, generator=gen).to(device, dtype)
        state = {"i": 0}

        def call() -> None:
            state["i"] = (state["i"] + 1) % n_weights  # rotate: no weight is still in L2
            torch.nn.functional.linear(x, weights[state["i"]])

        seconds = median_time(call, device, reps=reps, inner=n_weights)
        flops, nbytes = linear_flops(m, k, n), linear_bytes(m, k, n, elt)
        rows.append({
            "tokens": m,
            "time_us": seconds * 1e6,
            "us_per_token": seconds * 1e6 / m,
            "tflops": flops / seconds / 1e12,
            "gbps": nbytes / seconds / 1e9,
            "intensity": flops / nbytes,
        })
    return rows


def copy_bandwidth_gbps(device, nbytes: int = 2 << 30, reps: int = 20) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), device, reps=reps)
    return 2 * nbytes / seconds / 1e9


def matmul_tflops(device, size: int = 8192, dtype=None, reps: int = 20) -> float:
    """Dense matmul throughput on random data, the compute roof."""
    import torch

    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = median_time(lambda: a @ b, device, reps=reps)
    return 2 * size**3 / seconds / 1e12


def prefill_decode_times(model, *, prompt_tokens: int = 256, new_tokens: int = 64, reps: int = 5,
                         seed: int = 0) -> dict:
    """Time one prefill of `prompt_tokens` and `new_tokens` single-token decode steps with the KV cache.

    Returns per-token costs: prefill processes the whole prompt in one forward pass; each decode
    step is a forward pass over one token that reads the cache and every weight.
    """
    import torch

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, vocab, (1, prompt_tokens), generator=gen).to(device)
    steps = torch.randint(1, vocab, (new_tokens, 1, 1), generator=gen).to(device)
    timer = _timer(device)
    state = {}

    def prefill() -> None:
        state["past"] = model(input_ids=prompt, use_cache=True).past_key_values

    def decode() -> None:
        past = state["past"]
        for tok in steps:
            past = model(input_ids=tok, past_key_values=past, use_cache=True).past_key_values

    prefill_s, decode_s = [], []
    with torch.no_grad():
        for i in range(reps + 1):
            p, d = timer(prefill), timer(decode)
            if i:  # the first round warms up
                prefill_s.append(p)
                decode_s.append(d)
    prefill_t, decode_t = statistics.median(prefill_s), statistics.median(decode_s) / new_tokens
    return {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "prefill_ms": prefill_t * 1e3, "prefill_us_per_token": prefill_t * 1e6 / prompt_tokens,
            "decode_us_per_token": decode_t * 1e6, "decode_vs_prefill_per_token": decode_t / (prefill_t / prompt_tokens)}


def device_slug(name: str | None = None) -> str:
    """A short file-name prefix for a GPU name (default: this GPU): 'NVIDIA H100 80GB HBM3' -> 'h100'."""
    import re

    import torch

    name = name or torch.cuda.get_device_name(0)
    match = re.search(r"\b([A-Z]+\d+[A-Za-z]*)\b", name.replace("NVIDIA", ""))
    return (match.group(1) if match else re.sub(r"\W+", "_", name.replace("NVIDIA", "").strip())).lower()


def record_prefill_decode(name: str | None = None) -> None:
    import torch

    from .models import load_model

    require_cuda("The prefill/decode benchmark")
    name = name or f"{device_slug()}_prefill_decode"
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        model, _ = load_model(device="cuda", dtype=dtype)
        for prompt in (64, 256):
            rows.append({"dtype": str(dtype).replace("torch.", ""), **prefill_decode_times(model, prompt_tokens=prompt)})
    path = save_result(name, rows, description="bundled course model: one prefill, then 64 decode steps with the "
                       "KV cache, batch 1, median of 5", command=f"python -m course_lib.bench prefill-decode --name {name}")
    print(f"wrote {path}")
    for row in rows:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})


def record_model_eval(name: str | None = None) -> None:
    """The bundled model's perplexities and lm-eval scores in bf16 on this GPU and in fp32 on its CPU."""
    import time

    import torch

    from .lm_eval_tasks import evaluate
    from .models import load_model
    from .perplexity import FAST, FULL, FULL_VALIDATION, perplexity

    require_cuda("The model evaluation record")
    name = name or f"{device_slug()}_course_model_eval"
    rows = []
    for device, dtype in (("cuda", torch.bfloat16), ("cpu", torch.float32)):
        model, tokenizer = load_model(device=device, dtype=dtype)
        row = {"device": device, "dtype": str(dtype).replace("torch.", "")}
        start = time.perf_counter()
        for label, protocol in (("fast", FAST), ("full_test", FULL), ("full_validation", FULL_VALIDATION)):
            row[f"ppl_{label}"] = perplexity(model, tokenizer, protocol).ppl
        row["ppl_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        row.update(evaluate(model, tokenizer, batch_size=64))
        row["lm_eval_seconds"] = time.perf_counter() - start
        rows.append(row)
    path = save_result(name, rows, description="bundled course model: perplexity protocols (course_lib.perplexity) "
                       "and the local lm-eval tasks (course_lib.lm_eval_tasks), whole",
                       summary={"cpu_threads": torch.get_num_threads()},
                       command=f"python -m course_lib.bench model-eval --name {name}")
    print(f"wrote {path}")
    for row in rows:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})


def record_roofline(name: str | None = None) -> None:
    import torch

    require_cuda("The roofline benchmark")
    name = name or f"{device_slug()}_roofline"
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    bandwidth = copy_bandwidth_gbps(device)
    peak = matmul_tflops(device)
    rows = linear_roofline(device)
    path = save_result(
        name,
        rows,
        description=(
            f"fp16 y = x·Wᵀ, W {LLAMA7B_MLP[1]}x{LLAMA7B_MLP[0]} (Llama-2-7B gate/up), 4 weights in rotation, "
            "median of 30 CUDA-event samples"
        ),
        command=f"python -m course_lib.bench roofline --name {name}",
        summary={"copy_gbps": bandwidth, "matmul_fp16_tflops": peak, "matmul_size": 8192},
    )
    print(f"wrote {path}: copy {bandwidth:.0f} GB/s, fp16 matmul {peak:.0f} TFLOP/s")
    for row in rows:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})


GPTQ_TOOLS = ("course_lib", "course_lib-one-pass", "course_lib-one-pass-static", "llmcompressor", "gptqmodel")
AWQ_TOOLS = ("course_lib", "course_lib-duo-noclip", "llmcompressor", "gptqmodel")
TIME_TOOLS = {"gptq": GPTQ_TOOLS, "awq": AWQ_TOOLS}


def _tool_time_rows(run_once, tools, bits, *, device: str, repeats: int, group_size: int, tokenizer) -> list[dict]:
    """For each bits and tool: run_once(tool, bits, out_dir) -> (seconds, saved, model) `repeats` times; the median
    time, the FAST perplexity of the last model (on CPU) and whether CUDA memory was used."""
    import tempfile

    import torch

    from .perplexity import perplexity

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}.")
    cuda = torch.cuda.is_available()
    rows = []
    for b in bits:
        for tool in tools:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(repeats):
                with tempfile.TemporaryDirectory(prefix="quant_time_") as out:
                    seconds, saved, model = run_once(tool, b, out)
                    times.append(seconds)
            rows.append({"tool": tool, "bits": b, "group_size": group_size, "seconds": statistics.median(times),
                         "seconds_all": times, "saved": saved, "ppl_fast": perplexity(model, tokenizer).ppl,
                         "device": device if tool.startswith("course_lib") else "library's choice",
                         "used_cuda": bool(cuda and torch.cuda.max_memory_allocated() > 0)})
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    return rows


def _time_setup(method: str, tools, device: str, n_samples: int, seq_len: int):
    """Check the tools and the device; return (tokenizer, calibration windows) for a timing run."""
    from .models import load_tokenizer
    from .tokens import calibration_batches

    unknown = sorted(set(tools) - set(TIME_TOOLS[method]))
    if unknown:
        raise ValueError(f"unknown tools {unknown}; choose from {', '.join(TIME_TOOLS[method])}.")
    if device == "cuda":
        require_cuda(f"The {method.upper()} timing on cuda")
    tokenizer = load_tokenizer()
    return tokenizer, calibration_batches(tokenizer, n_samples, seq_len)


def gptq_time_rows(device: str = "cpu", bits=(4, 3), tools=GPTQ_TOOLS, *, repeats: int = 1, n_samples: int = 128,
                   seq_len: int = 256, group_size: int = 128) -> list[dict]:
    """The same GPTQ job (the bundled model loaded in float32 by every tool, n_samples x seq_len
    calibration tokens, group_size, symmetric, no act-order, 1% dampening) with each tool: the median
    wall time of load + quantize +
    save over `repeats` runs, then the FAST perplexity on CPU. "course_lib" runs its defaults, which are
    the paper's code's and GPTQModel's: true-sequential, each group's scale taken when the column walk
    reaches it. "course_lib-one-pass" calibrates a whole block in one pass, as llm-compressor does;
    "course_lib-one-pass-static" also takes every group's scale from the float weights before the walk
    (static_groups), as llm-compressor 0.14 does: llm-compressor's settings. The libraries choose their
    device themselves; `used_cuda` says whether they allocated on it. course_lib packs 2/4/8 bits
    only: at 3 bits its time has no save step (`saved` is False)."""
    import torch

    from .gptq import PACK_BITS, gptq_quantize_model, save_gptq_checkpoint
    from .models import BUNDLED_DIR, load_model

    tokenizer, calib = _time_setup("gptq", tools, device, n_samples, seq_len)

    def run_once(tool: str, b: int, out: str):
        """(seconds, saved, quantized model on CPU)."""
        if tool.startswith("course_lib"):
            start = time.perf_counter()
            model, _ = load_model(device=device, dtype=torch.float32)
            report = gptq_quantize_model(model, calib.to(device), b, group_size=group_size,
                                         true_sequential=tool == "course_lib", static_groups=tool.endswith("static"),
                                         progress=False)
            if b in PACK_BITS:
                save_gptq_checkpoint(model, report, out, tokenizer)
            # the fake-quantized model computes what the checkpoint does
            return time.perf_counter() - start, b in PACK_BITS, model.cpu()
        from . import gptq_tools

        quantize = {"llmcompressor": gptq_tools.quantize_with_llmcompressor,
                    "gptqmodel": gptq_tools.quantize_with_gptqmodel}[tool]
        seconds = quantize(BUNDLED_DIR, out, calib, bits=b, group_size=group_size, dtype=torch.float32).seconds
        return seconds, True, gptq_tools.load_quantized(out)

    return _tool_time_rows(run_once, tools, bits, device=device, repeats=repeats, group_size=group_size,
                           tokenizer=tokenizer)


def awq_time_rows(device: str = "cpu", bits=(4,), tools=AWQ_TOOLS, *, repeats: int = 1, n_samples: int = 128,
                  seq_len: int = 256, group_size: int = 128) -> list[dict]:
    """The same AWQ job (the bundled model in float32, n_samples x seq_len calibration tokens, group_size,
    zero point) with course_lib.awq (the paper's settings: x-only scales, then the clipping search;
    "course_lib-duo-noclip": llm-compressor's, duo scaling and no clipping), llm-compressor's AWQModifier
    (float32) and GPTQModel's AWQ (bfloat16: it can't calibrate float32 on a CPU, see awq_tools): median
    wall time of load + quantize + save, then FAST perplexity on CPU after reloading (course_lib: the AWQ
    checkpoint it wrote, reloaded by transformers). AWQ checkpoints are 4-bit; course_lib at other widths
    is timed without the save (`saved` False) and scored in memory."""
    import torch

    from .awq import awq_quantize_model
    from .awq.export import AWQ_BITS, load_awq_checkpoint, save_awq_checkpoint
    from .models import BUNDLED_DIR, load_model

    tokenizer, calib = _time_setup("awq", tools, device, n_samples, seq_len)

    def run_once(tool: str, b: int, out: str):
        if tool.startswith("course_lib"):
            start = time.perf_counter()
            model, _ = load_model(device=device, dtype=torch.float32)
            like_llmc = tool == "course_lib-duo-noclip"  # llm-compressor's settings: duo scaling, no clipping
            report = awq_quantize_model(model, calib.to(device), b, group_size=group_size, duo=like_llmc,
                                        clip=not like_llmc, progress=False)
            if b != AWQ_BITS:
                return time.perf_counter() - start, False, model.cpu()
            save_awq_checkpoint(model, report, out, tokenizer)
            seconds = time.perf_counter() - start
            return seconds, True, load_awq_checkpoint(out, dtype=torch.float32)
        from . import awq_tools, gptq_tools

        if tool == "llmcompressor":
            run = awq_tools.quantize_awq_with_llmcompressor(BUNDLED_DIR, out, calib, bits=b, group_size=group_size)
        else:
            run = awq_tools.quantize_awq_with_gptqmodel(BUNDLED_DIR, out, calib, bits=b, group_size=group_size)
        seconds = run.seconds
        return seconds, True, gptq_tools.load_quantized(out)

    return _tool_time_rows(run_once, tools, bits, device=device, repeats=repeats, group_size=group_size,
                           tokenizer=tokenizer)


_TIME_DESCRIPTIONS = {
    "gptq": "GPTQ of the bundled model (loaded in float32 by every tool, 128 x 256 calibration tokens, group 128, "
            "symmetric, no act-order): median wall time of load + quantize + save, and FAST perplexity on CPU "
            "(float model: 44.29)",
    "awq": "AWQ of the bundled model (float32, GPTQModel bfloat16; 128 x 256 calibration tokens, group 128, zero "
           "point): median wall time of load + quantize + save, and FAST perplexity on CPU after reloading the "
           "checkpoint with transformers (float model: 44.29)",
}


def record_quant_time(method: str = "gptq", device: str = "cpu", bits=(4, 3), tools=None, threads: int | None = None,
                      repeats: int = 1, name: str | None = None) -> None:
    """Run gptq_time_rows or awq_time_rows and save them as data/results/<name>.json."""
    import torch

    tools = tuple(tools or TIME_TOOLS[method])
    if threads:
        torch.set_num_threads(threads)
    name = name or ("cpu" if device == "cpu" else device_slug()) + f"_{method}_time"
    rows_fn = {"gptq": gptq_time_rows, "awq": awq_time_rows}[method]
    rows = rows_fn(device, bits, tools, repeats=repeats)
    command = (f"python -m course_lib.bench {method}-time --device {device} --bits {' '.join(map(str, bits))} "
               f"--tools {' '.join(tools)} --repeats {repeats}" + (f" --threads {threads}" if threads else "")
               + f" --name {name}")
    path = save_result(name, rows, description=_TIME_DESCRIPTIONS[method],
                       summary={"cpu_threads": torch.get_num_threads(), "repeats": repeats}, command=command)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    roof = sub.add_parser("roofline", help="decode vs prefill: a Llama-7B linear layer at 1..4096 tokens")
    roof.add_argument("--name", default=None, help="result file name (default: <gpu>_roofline)")
    pd = sub.add_parser("prefill-decode", help="the bundled model: prefill vs decode time per token")
    pd.add_argument("--name", default=None, help="result file name (default: <gpu>_prefill_decode)")
    ev = sub.add_parser("model-eval", help="the bundled model: perplexities and lm-eval scores, GPU bf16 and CPU fp32")
    ev.add_argument("--name", default=None, help="result file name (default: <gpu>_course_model_eval)")
    for method, default_bits in (("gptq", [4, 3]), ("awq", [4])):
        gt = sub.add_parser(f"{method}-time", help=f"{method.upper()} wall time and perplexity: course_lib vs "
                            "llm-compressor vs GPTQModel")
        gt.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where course_lib quantizes")
        gt.add_argument("--bits", type=int, nargs="+", default=default_bits)
        gt.add_argument("--tools", nargs="+", default=list(TIME_TOOLS[method]), choices=TIME_TOOLS[method])
        gt.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
        gt.add_argument("--repeats", type=int, default=1, help="runs per tool; the median time is recorded")
        gt.add_argument("--name", default=None, help=f"result file name (default: <device>_{method}_time)")
    aw = sub.add_parser("awq-seeds", help="chapter 04: GPTQ vs AWQ perplexity over several calibration draws, on CPU")
    aw.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    aw.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    aw.add_argument("--eval-tokens", type=int, nargs="+", default=[8192, 16384],
                    help="score each model on the first N test tokens, for each N (default: 8192 16384)")
    aw.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: as the notebooks' canonical run)")
    aw.add_argument("--name", default=None, help="result file name (default: cpu_awq_gptq_seeds)")
    gg = sub.add_parser("gptq-grids", help="chapter 03: RTN and GPTQ on the three 4-bit grids over several "
                        "calibration draws, on CPU")
    gg.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    gg.add_argument("--bits", type=int, nargs="+", default=[4])
    gg.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: as the notebooks' canonical run)")
    gg.add_argument("--name", default=None, help="result file name (default: cpu_gptq_grids)")
    qc = sub.add_parser("qat-control", help="chapter 02: QAT and its plain fine-tune control at several learning "
                        "rates, on CPU")
    qc.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-4, 3e-5, 1e-5])
    qc.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: as the notebooks' canonical run)")
    qc.add_argument("--name", default=None, help="result file name (default: cpu_qat_control)")
    kv = sub.add_parser("kv-decode", help="time per decode step against position, with/without the KV cache")
    kv.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    kv.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    kv.add_argument("--model", default=None, choices=["course-model", "llama-1b-shape", "tiny"],
                    help="default: the bundled model on cpu (eager); random weights in Llama-3.2-1B's shapes on "
                         "cuda (CUDA graphs); tiny: the GPU benchmark's code at toy sizes (a smoke test)")
    kv.add_argument("--name", default=None, help="result file name (default: <device>_kv_decode)")
    at = sub.add_parser("attention", help="attention forward: naive, SDPA backends and the course Triton kernel")
    at.add_argument("--name", default=None, help="result file name (default: <gpu>_attention)")
    at.add_argument("--tune", choices=("quick", "full"), default=None,
                    help="the course kernel's autotuning: 2 or 7 configurations (default: COURSE_FLASH_TUNE, else full)")
    at.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the code, records nothing real")
    dq = sub.add_parser("dequant-matmul", help="chapter 11 (planned): 4-bit dequantize-then-matmul in PyTorch vs fp16 "
                        "cuBLAS at Llama-3-8B decode shapes")
    dq.add_argument("--name", default=None, help="result file name (default: <gpu>_dequant_matmul)")
    sp = sub.add_parser("sparse24", help="2:4 sparse (cuSPARSELt, CUTLASS) vs dense vs CSR matmuls at Llama shapes")
    sp.add_argument("--name", default=None, help="result file name (default: <gpu>_sparse24)")
    ps = sub.add_parser("prune-sweep", help="chapter 07: perplexity of the course model pruned by magnitude, Wanda "
                        "and SparseGPT at 10-70%% and N:M, on CPU")
    ps.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: as the notebooks' canonical run)")
    ps.add_argument("--name", default=None, help="result file name (default: cpu_prune_sweep)")
    ds = sub.add_parser("distill", help="chapter 08: four students (CE, logit KD, sequence-level KD, KD on the "
                        "teacher's text), context distillation, the encoder, and the compression table")
    ds.add_argument("--profile", default="large", choices=["small", "medium", "large"])
    ds.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    ds.add_argument("--part", default="all", choices=["all", "white", "extras", "encoder", "seeds"],
                    help="white: the four students and the compression table; extras: decoding, context distillation, "
                         "the encoder; encoder: the encoder experiment over --seeds; seeds: the CE-only and logit-KD "
                         "students over --seeds, trained concurrently (not part of all)")
    ds.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of --part encoder and seeds")
    ds.add_argument("--steps", type=int, default=None, help="--part seeds: fewer training steps than the profile's")
    ds.add_argument("--workers", type=int, default=None,
                    help="--part seeds: trainings at once, one process each (default: all on CUDA, 1 on CPU)")
    ds.add_argument("--name", default=None, help="result file name (default: <device>_distill[_extras])")
    args = parser.parse_args(argv)
    try:
        if args.bench == "roofline":
            record_roofline(args.name)
        elif args.bench == "prefill-decode":
            record_prefill_decode(args.name)
        elif args.bench == "model-eval":
            record_model_eval(args.name)
        elif args.bench == "kv-decode":
            from .kv.bench import record_kv_decode

            record_kv_decode(args.name, device=args.device, threads=args.threads, model=args.model)
        elif args.bench == "attention":
            from .attention.bench import record_attention

            record_attention(args.name, tune=args.tune, smoke=args.smoke)
        elif args.bench == "dequant-matmul":
            from .kernels.dequant_bench import record_dequant_matmul

            record_dequant_matmul(args.name)
        elif args.bench == "sparse24":
            from .prune.sparse_bench import record_sparse24

            record_sparse24(args.name)
        elif args.bench == "prune-sweep":
            from .prune.teach import record_sweep

            record_sweep(args.name, threads=args.threads)
        elif args.bench == "distill":
            if args.part == "seeds":
                from .distill.seeds import record_seeds

                record_seeds(args.name, profile=args.profile, seeds=tuple(args.seeds), steps=args.steps,
                             device=args.device, workers=args.workers)
            else:
                from .distill.experiments import record_distill

                record_distill(args.name, profile=args.profile, device=args.device, part=args.part,
                               seeds=tuple(args.seeds))
        elif args.bench == "awq-seeds":
            from .awq.bench import record_seed_spread

            record_seed_spread(args.name, seeds=tuple(args.seeds), bits=tuple(args.bits), threads=args.threads,
                               eval_tokens=tuple(args.eval_tokens))
        elif args.bench == "gptq-grids":
            from .gptq.bench import record_grid_spread

            record_grid_spread(args.name, seeds=tuple(args.seeds), bits=tuple(args.bits), threads=args.threads)
        elif args.bench == "qat-control":
            from .quant.bench import record_control_sweep

            record_control_sweep(args.name, lrs=tuple(args.lrs), threads=args.threads)
        elif args.bench in ("gptq-time", "awq-time"):
            record_quant_time(args.bench.split("-")[0], args.device, tuple(args.bits), tuple(args.tools), args.threads,
                              args.repeats, args.name)
    except (RuntimeError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
