"""Chapter 03's benchmarks: GPTQ's quantization time against the libraries, and RTN against GPTQ on the
three 4-bit grids over several calibration draws.

    python -m course_lib.bench gptq-time [--device cpu|cuda] [--tools ...] [--bits 4 3] [--threads 2]
    python -m course_lib.bench gptq-grids [--seeds 0 1 2 3 4] [--bits 4] [--threads 1] [--name cpu_gptq_grids]

gptq-time runs the same GPTQ job with course_lib, llm-compressor and GPTQModel (tool_time_rows,
time_setup and record_quant_time are shared with awq.bench's awq-time).

RTN at 4 bits, groups of 128, prints three different perplexities in chapters 02, 03 and 04 because
each uses another grid (course_lib.quant.grid_name): the restricted symmetric grid [-7, 7]
(chapter 02), GPTQ's grid [-8, 7] (chapter 03) and the asymmetric grid [0, 15] (chapter 04). This
benchmark runs RTN once per grid (it reads no calibration data) and GPTQ on the same grid for each
seed; a seed draws other random windows of the calibration split (the small profile's 32 x 128
tokens). The spread of GPTQ over the seeds is the noise a GPTQ-against-RTN margin must exceed.
With --threads 1 (the canonical run's setting) the seed-0 rows are the notebook's own numbers.
"""

from __future__ import annotations

import statistics
import time

from ..core.env import require_cuda
from ..core.results import save_result
from ..core.timing import device_slug

GPTQ_TOOLS = ("course_lib", "course_lib-one-pass", "course_lib-one-pass-static", "llmcompressor", "gptqmodel")
GPTQ_TIME_DESCRIPTION = ("GPTQ of the bundled model (loaded in float32 by every tool, 128 x 256 calibration tokens, "
                         "group 128, symmetric, no act-order): median wall time of load + quantize + save, and FAST "
                         "perplexity on CPU (float model: 44.29)")

# (config keys for quantize_grid, in the order the notebook shows them)
GRIDS = ({"restricted": True}, {}, {"symmetric": False})


def grid_rows(seeds=(0, 1, 2, 3, 4), bits=(4,), *, n_samples: int = 32, seq_len: int = 128,
              group_size: int = 128) -> list[dict]:
    """One row per grid, bit width and seed for GPTQ, and one per grid and bit width for RTN (seed None):
    {"grid", "bits", "method", "seed", "ppl_fast", "seconds"}."""
    import torch

    from ..lm import models
    from ..lm.tokens import calibration_batches
    from .teach import quantize_grid

    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, at least one; got {seeds!r}.")
    model, tok = models.load_model(dtype=torch.float32)
    rtn = [{"method": "RTN", "bits": b, "group_size": group_size, **g} for b in bits for g in GRIDS]
    rows = [{"grid": r["grid"], "bits": r["bits"], "method": "RTN", "seed": None, "ppl_fast": r["perplexity"],
             "seconds": r["seconds"]} for r in quantize_grid(model, tok, calibration_batches(tok, 1, seq_len), rtn)]
    gptq = [{"method": "GPTQ", "bits": b, "group_size": group_size, **g} for b in bits for g in GRIDS]
    for seed in seeds:
        calib = calibration_batches(tok, n_samples, seq_len, seed=seed)
        for r in quantize_grid(model, tok, calib, gptq):
            rows.append({"grid": r["grid"], "bits": r["bits"], "method": "GPTQ", "seed": seed,
                         "ppl_fast": r["perplexity"], "seconds": r["seconds"]})
        print(f"seed {seed}: " + ", ".join(f"{r['grid']} {r['ppl_fast']:.4g}" for r in rows if r["seed"] == seed),
              flush=True)
    return rows


def grid_summary(rows: list[dict]) -> list[dict]:
    """Per grid and bit width: RTN's perplexity, GPTQ's mean, best, worst and spread (max - min) over the
    seeds, RTN - GPTQ (mean over the seeds), and the verdict: "GPTQ lower" only when the mean margin
    exceeds GPTQ's spread and every seed is below RTN, "RTN lower" in the mirror case, otherwise "tie"
    (the course's rule: a ranking needs a margin larger than the measured spread; chapter 04's AWQ-GPTQ
    ranking uses the same rule)."""
    out = []
    keys = list(dict.fromkeys((r["bits"], r["grid"]) for r in rows if r["method"] == "GPTQ"))  # in row order
    for bits, grid in keys:
        gptq = [r["ppl_fast"] for r in rows if (r["bits"], r["grid"], r["method"]) == (bits, grid, "GPTQ")]
        rtn = [r["ppl_fast"] for r in rows if (r["bits"], r["grid"], r["method"]) == (bits, grid, "RTN")]
        if not rtn:
            raise ValueError(f"No RTN row for {grid} at {bits} bits: run grid_rows with this grid.")
        spread, margin = max(gptq) - min(gptq), rtn[0] - statistics.fmean(gptq)
        if margin > spread and max(gptq) < rtn[0]:
            verdict = "GPTQ lower"
        elif -margin > spread and min(gptq) > rtn[0]:
            verdict = "RTN lower"
        else:
            verdict = "tie"
        out.append({"bits": bits, "grid": grid, "seeds": len(gptq), "RTN": rtn[0],
                    "GPTQ mean": statistics.fmean(gptq), "GPTQ best": min(gptq), "GPTQ worst": max(gptq),
                    "GPTQ spread": spread, "RTN - GPTQ mean": margin, "verdict": verdict})
    return out


def record_grid_spread(name: str | None = None, *, seeds=(0, 1, 2, 3, 4), bits=(4,), threads: int = 1) -> None:
    """Run grid_rows on CPU and save them, with grid_summary() as the summary, as data/results/<name>.json."""
    import torch

    from ..core.results import save_result

    torch.set_num_threads(threads)
    name = name or "cpu_gptq_grids"
    rows = grid_rows(seeds, bits)
    command = (f"python -m course_lib.bench gptq-grids --seeds {' '.join(map(str, seeds))} "
               f"--bits {' '.join(map(str, bits))} --threads {threads}")
    path = save_result(name, rows, command=command, summary={"cpu_threads": threads, "grids": grid_summary(rows)},
                       description="RTN and GPTQ of the bundled model on the three 4-bit grids (restricted symmetric, "
                                   "GPTQ's, asymmetric), groups of 128; GPTQ on 32 x 128 calibration tokens drawn "
                                   "with each seed; FAST perplexity (chapter 03)")
    print(f"saved {path}")


def tool_time_rows(run_once, tools, bits, *, device: str, repeats: int, group_size: int, tokenizer) -> list[dict]:
    """For each bits and tool: run_once(tool, bits, out_dir) -> (seconds, saved, model) `repeats` times; the median
    time, the FAST perplexity of the last model (on CPU) and whether CUDA memory was used."""
    import tempfile

    import torch

    from ..lm.perplexity import perplexity

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


def time_setup(method: str, tools, known: tuple[str, ...], device: str, n_samples: int, seq_len: int):
    """Check the tools and the device; return (tokenizer, calibration windows) for a timing run."""
    from ..lm.models import load_tokenizer
    from ..lm.tokens import calibration_batches

    unknown = sorted(set(tools) - set(known))
    if unknown:
        raise ValueError(f"unknown tools {unknown}; choose from {', '.join(known)}.")
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

    from . import PACK_BITS, gptq_quantize_model, save_gptq_checkpoint
    from ..lm.models import BUNDLED_DIR, load_model

    tokenizer, calib = time_setup("gptq", tools, GPTQ_TOOLS, device, n_samples, seq_len)

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
        from . import tools as gptq_tools

        quantize = {"llmcompressor": gptq_tools.quantize_with_llmcompressor,
                    "gptqmodel": gptq_tools.quantize_with_gptqmodel}[tool]
        seconds = quantize(BUNDLED_DIR, out, calib, bits=b, group_size=group_size, dtype=torch.float32).seconds
        return seconds, True, gptq_tools.load_quantized(out)

    return tool_time_rows(run_once, tools, bits, device=device, repeats=repeats, group_size=group_size,
                          tokenizer=tokenizer)


def record_quant_time(method: str, rows_fn, default_tools: tuple[str, ...], description: str, device: str = "cpu",
                      bits=(4,), tools=None, threads: int | None = None, repeats: int = 1,
                      name: str | None = None) -> None:
    """Run rows_fn (gptq_time_rows, awq.bench.awq_time_rows) and save its rows as data/results/<name>.json,
    with the command that made them (python -m course_lib.bench <method>-time)."""
    import torch

    tools = tuple(tools or default_tools)
    if threads:
        torch.set_num_threads(threads)
    rows = rows_fn(device, bits, tools, repeats=repeats)
    name = name or ("cpu" if device == "cpu" else device_slug()) + f"_{method}_time"
    command = (f"python -m course_lib.bench {method}-time --device {device} --bits {' '.join(map(str, bits))} "
               f"--tools {' '.join(tools)} --repeats {repeats}" + (f" --threads {threads}" if threads else "")
               + f" --name {name}")
    path = save_result(name, rows, description=description,
                       summary={"cpu_threads": torch.get_num_threads(), "repeats": repeats}, command=command)
    print(f"wrote {path}")


def record_gptq_time(device: str = "cpu", bits=(4, 3), tools=None, threads: int | None = None, repeats: int = 1,
                     name: str | None = None) -> None:
    """python -m course_lib.bench gptq-time"""
    record_quant_time("gptq", gptq_time_rows, GPTQ_TOOLS, GPTQ_TIME_DESCRIPTION, device, bits, tools, threads, repeats,
                      name)
