"""Chapter 04's benchmarks: AWQ's quantization time against the libraries, and the GPTQ-against-AWQ ranking
over several calibration draws, recorded on CPU.

    python -m course_lib.bench awq-time [--device cpu|cuda] [--tools ...] [--bits 4] [--threads 2]

    python -m course_lib.bench awq-seeds [--seeds 0 1 2 3 4] [--bits 4 3] [--eval-tokens 8192 16384] [--threads 1]
                                         [--name cpu_awq_gptq_seeds]

The notebook compares GPTQ and AWQ on one draw of calibration windows (seed 0, the small profile's
16 x 128 tokens), where they differ by a few tenths of a percent in perplexity. Whether that is a
ranking or noise needs the spread over draws: each seed draws other random windows of the
calibration split (course_lib.lm.tokens.calibration_batches), and GPTQ and AWQ run on the same windows,
4 and 3 bits, groups of 128, asymmetric grid. Each model is scored on two evaluation sets, the first
8192 and 16384 tokens of the test split (the notebook's small profile and the course's FAST protocol):
the evaluation tokens are a second source of noise beside the calibration draw. With --threads 1 (the
canonical run's setting) the seed-0 rows are the notebook's own numbers.
"""

from __future__ import annotations

import statistics
import time

from ..gptq.bench import record_quant_time, time_setup, tool_time_rows

AWQ_TOOLS = ("course_lib", "course_lib-duo-noclip", "llmcompressor", "gptqmodel")
AWQ_TIME_DESCRIPTION = ("AWQ of the bundled model (float32, GPTQModel bfloat16; 128 x 256 calibration tokens, group 128, "
                        "zero point): median wall time of load + quantize + save, and FAST perplexity on CPU after "
                        "reloading the checkpoint with transformers (float model: 44.29)")

METHODS = ("GPTQ", "AWQ")
EVAL_TOKENS = (8192, 16384)  # the notebook's small-profile perplexity, and the course's FAST protocol


def seed_rows(seeds=(0, 1, 2, 3, 4), bits=(4, 3), *, n_samples: int = 16, seq_len: int = 128,
              group_size: int = 128, eval_tokens=EVAL_TOKENS) -> list[dict]:
    """One row per seed, bit width and method: {"seed", "bits", "method", "seconds", "ppl_<n>" for each n of
    eval_tokens}, ppl_<n> the perplexity on the first n tokens of the test split (windows of 256); RTN (which
    reads no calibration data) once per bit width, with seed None."""
    import torch

    from ..lm import models
    from ..lm.perplexity import Protocol, perplexity
    from ..lm.tokens import calibration_batches
    from .teach import quantize_grid

    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, at least one; got {seeds!r}.")
    if not eval_tokens or any(not isinstance(n, int) or n < 256 for n in eval_tokens):
        raise ValueError(f"eval_tokens must be token counts of at least one window (256), got {eval_tokens!r}.")
    first, *others = [Protocol(max_tokens=n) for n in eval_tokens]
    model, tok = models.load_model(dtype=torch.float32)

    def scored(calib, configs, seed):
        kept = {}
        out = []
        for i, r in enumerate(quantize_grid(model, tok, calib, configs, protocol=first, keep=kept)):
            row = {"seed": seed, "bits": r["bits"], "method": r["method"], "seconds": r["seconds"],
                   f"ppl_{first.max_tokens}": r["perplexity"]}
            row.update({f"ppl_{p.max_tokens}": perplexity(kept[i][0], tok, p).ppl for p in others})
            out.append(row)
        return out

    configs = [{"method": m, "bits": b, "group_size": group_size, "symmetric": False} for b in bits for m in METHODS]
    rtn = [{"method": "RTN", "bits": b, "group_size": group_size, "symmetric": False} for b in bits]
    rows = scored(calibration_batches(tok, 1, seq_len), rtn, None)
    for seed in seeds:
        rows += scored(calibration_batches(tok, n_samples, seq_len, seed=seed), configs, seed)
        print(f"seed {seed}: " + ", ".join(f"{r['method']} {r['bits']}-bit "
                                           + "/".join(f"{r[f'ppl_{n}']:.4g}" for n in eval_tokens)
                                           for r in rows if r["seed"] == seed), flush=True)
    return rows


def ranking(rows: list[dict], key: str = f"ppl_{EVAL_TOKENS[0]}") -> list[dict]:
    """Per bit width, on the perplexity rows[...][key]: RTN's perplexity, each method's mean, spread (max - min) and worst perplexity over the
    seeds, the paired difference AWQ - GPTQ (mean, min, max over the seeds: both ran on the same windows)
    and the verdict.

    The verdict names a winner only when the mean gap exceeds the larger of the two spreads and every
    seed agrees on the sign; otherwise "tie" (the course's rule: a margin larger than the measured spread).
    """
    out = []
    for bits in sorted({r["bits"] for r in rows}, reverse=True):
        ppl = {m: {r["seed"]: r[key] for r in rows if r["bits"] == bits and r["method"] == m} for m in METHODS}
        seeds = sorted(set(ppl["GPTQ"]) & set(ppl["AWQ"]))
        if not seeds:
            raise ValueError(f"No seed has both a GPTQ and an AWQ row at {bits} bits.")
        diff = [ppl["AWQ"][s] - ppl["GPTQ"][s] for s in seeds]
        mean = {m: statistics.fmean(ppl[m][s] for s in seeds) for m in METHODS}
        spread = {m: max(ppl[m][s] for s in seeds) - min(ppl[m][s] for s in seeds) for m in METHODS}
        gap = statistics.fmean(diff)
        if abs(gap) > max(spread.values()) and (all(d > 0 for d in diff) or all(d < 0 for d in diff)):
            verdict = "GPTQ lower" if gap > 0 else "AWQ lower"
        else:
            verdict = "tie"
        rtn = [r[key] for r in rows if r["bits"] == bits and r["method"] == "RTN"]
        out.append({"bits": bits, "seeds": len(seeds), "RTN": rtn[0] if rtn else None,
                    "GPTQ mean": mean["GPTQ"], "GPTQ spread": spread["GPTQ"],
                    "GPTQ worst": max(ppl["GPTQ"][s] for s in seeds),
                    "AWQ mean": mean["AWQ"], "AWQ spread": spread["AWQ"], "AWQ worst": max(ppl["AWQ"][s] for s in seeds),
                    "AWQ - GPTQ mean": gap, "AWQ - GPTQ min": min(diff), "AWQ - GPTQ max": max(diff),
                    "verdict": verdict})
    return out


def record_seed_spread(name: str | None = None, *, seeds=(0, 1, 2, 3, 4), bits=(4, 3), threads: int = 1,
                       eval_tokens=EVAL_TOKENS) -> None:
    """Run seed_rows on CPU and save them, with ranking() on each evaluation set as the summary, as
    data/results/<name>.json."""
    import torch

    from ..core.results import save_result

    torch.set_num_threads(threads)
    name = name or "cpu_awq_gptq_seeds"
    rows = seed_rows(tuple(seeds), tuple(bits), eval_tokens=tuple(eval_tokens))
    command = (f"python -m course_lib.bench awq-seeds --seeds {' '.join(map(str, seeds))} "
               f"--bits {' '.join(map(str, bits))} --eval-tokens {' '.join(map(str, eval_tokens))} "
               f"--threads {threads} --name {name}")
    path = save_result(name, rows, command=command,
                       summary={"cpu_threads": threads, "eval_tokens": list(eval_tokens),
                                "ranking": {f"ppl_{n}": ranking(rows, f"ppl_{n}") for n in eval_tokens}},
                       description="GPTQ and AWQ of the bundled model on several draws of calibration windows (16 x 128 "
                                   "tokens of the calibration split, the small profile's; seed = the draw), groups of "
                                   "128, asymmetric grid, float32 on CPU; ppl_<n>: perplexity on the first n test tokens")
    print(f"wrote {path}")


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

    from . import awq_quantize_model
    from .export import AWQ_BITS, load_awq_checkpoint, save_awq_checkpoint
    from ..lm.models import BUNDLED_DIR, load_model

    tokenizer, calib = time_setup("awq", tools, AWQ_TOOLS, device, n_samples, seq_len)

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
        from ..gptq import tools as gptq_tools
        from . import tools as awq_tools

        if tool == "llmcompressor":
            run = awq_tools.quantize_awq_with_llmcompressor(BUNDLED_DIR, out, calib, bits=b, group_size=group_size)
        else:
            run = awq_tools.quantize_awq_with_gptqmodel(BUNDLED_DIR, out, calib, bits=b, group_size=group_size)
        seconds = run.seconds
        return seconds, True, gptq_tools.load_quantized(out)

    return tool_time_rows(run_once, tools, bits, device=device, repeats=repeats, group_size=group_size,
                          tokenizer=tokenizer)


def record_awq_time(device: str = "cpu", bits=(4,), tools=None, threads: int | None = None, repeats: int = 1,
                    name: str | None = None) -> None:
    """python -m course_lib.bench awq-time"""
    record_quant_time("awq", awq_time_rows, AWQ_TOOLS, AWQ_TIME_DESCRIPTION, device, bits, tools, threads, repeats, name)
