"""Chapter 04's GPTQ-against-AWQ ranking over several calibration draws, recorded on CPU.

    python -m course_lib.bench awq-seeds [--seeds 0 1 2 3 4] [--bits 4 3] [--threads 1] [--name cpu_awq_gptq_seeds]

The notebook compares GPTQ and AWQ on one draw of calibration windows (seed 0, the small profile's
16 x 128 tokens), where they differ by a few tenths of a percent in perplexity. Whether that is a
ranking or noise needs the spread over draws: each seed draws other random windows of the
calibration split (course_lib.tokens.calibration_batches), and GPTQ and AWQ run on the same windows,
4 and 3 bits, groups of 128, asymmetric grid, FAST perplexity. With --threads 1 (the canonical
run's setting) the seed-0 rows are the notebook's own numbers.
"""

from __future__ import annotations

import statistics

METHODS = ("GPTQ", "AWQ")


def seed_rows(seeds=(0, 1, 2, 3, 4), bits=(4, 3), *, n_samples: int = 16, seq_len: int = 128,
              group_size: int = 128) -> list[dict]:
    """One row per seed, bit width and method: {"seed", "bits", "method", "ppl_fast", "seconds"}; RTN (which
    reads no calibration data) once per bit width, with seed None."""
    import torch

    from .. import models
    from ..gptq.teach import quantize_grid
    from ..tokens import calibration_batches

    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, at least one; got {seeds!r}.")
    model, tok = models.load_model(dtype=torch.float32)
    configs = [{"method": m, "bits": b, "group_size": group_size, "symmetric": False} for b in bits for m in METHODS]
    rtn = [{"method": "RTN", "bits": b, "group_size": group_size, "symmetric": False} for b in bits]
    rows = [{"seed": None, "bits": r["bits"], "method": "RTN", "ppl_fast": r["perplexity"], "seconds": r["seconds"]}
            for r in quantize_grid(model, tok, calibration_batches(tok, 1, seq_len), rtn)]
    for seed in seeds:
        calib = calibration_batches(tok, n_samples, seq_len, seed=seed)
        for r in quantize_grid(model, tok, calib, configs):
            rows.append({"seed": seed, "bits": r["bits"], "method": r["method"], "ppl_fast": r["perplexity"],
                         "seconds": r["seconds"]})
        print(f"seed {seed}: " + ", ".join(f"{r['method']} {r['bits']}-bit {r['ppl_fast']:.4g}"
                                           for r in rows if r["seed"] == seed), flush=True)
    return rows


def ranking(rows: list[dict]) -> list[dict]:
    """Per bit width: RTN's perplexity, each method's mean, spread (max - min) and worst perplexity over the
    seeds, the paired difference AWQ - GPTQ (mean, min, max over the seeds: both ran on the same windows)
    and the verdict.

    The verdict names a winner only when the mean gap exceeds the larger of the two spreads and every
    seed agrees on the sign; otherwise "tie" (the course's rule: a margin larger than the measured spread).
    """
    out = []
    for bits in sorted({r["bits"] for r in rows}, reverse=True):
        ppl = {m: {r["seed"]: r["ppl_fast"] for r in rows if r["bits"] == bits and r["method"] == m} for m in METHODS}
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
        rtn = [r["ppl_fast"] for r in rows if r["bits"] == bits and r["method"] == "RTN"]
        out.append({"bits": bits, "seeds": len(seeds), "RTN": rtn[0] if rtn else None,
                    "GPTQ mean": mean["GPTQ"], "GPTQ spread": spread["GPTQ"],
                    "GPTQ worst": max(ppl["GPTQ"][s] for s in seeds),
                    "AWQ mean": mean["AWQ"], "AWQ spread": spread["AWQ"], "AWQ worst": max(ppl["AWQ"][s] for s in seeds),
                    "AWQ - GPTQ mean": gap, "AWQ - GPTQ min": min(diff), "AWQ - GPTQ max": max(diff),
                    "verdict": verdict})
    return out


def record_seed_spread(name: str | None = None, *, seeds=(0, 1, 2, 3, 4), bits=(4, 3), threads: int = 1) -> None:
    """Run seed_rows on CPU and save them, with ranking() as the summary, as data/results/<name>.json."""
    import torch

    from ..results import save_result

    torch.set_num_threads(threads)
    name = name or "cpu_awq_gptq_seeds"
    rows = seed_rows(tuple(seeds), tuple(bits))
    command = (f"python -m course_lib.bench awq-seeds --seeds {' '.join(map(str, seeds))} "
               f"--bits {' '.join(map(str, bits))} --threads {threads} --name {name}")
    path = save_result(name, rows, command=command, summary={"cpu_threads": threads, "ranking": ranking(rows)},
                       description="GPTQ and AWQ of the bundled model on several draws of calibration windows (16 x 128 "
                                   "tokens of the calibration split, the small profile's; seed = the draw), groups of "
                                   "128, asymmetric grid, float32 on CPU: FAST perplexity (float model 44.29)")
    print(f"wrote {path}")
