"""Chapter 03's RTN-against-GPTQ comparison on the three 4-bit grids, over several calibration draws, on CPU.

    python -m course_lib.bench gptq-grids [--seeds 0 1 2 3 4] [--bits 4] [--threads 1] [--name cpu_gptq_grids]

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

# (config keys for quantize_grid, in the order the notebook shows them)
GRIDS = ({"restricted": True}, {}, {"symmetric": False})


def grid_rows(seeds=(0, 1, 2, 3, 4), bits=(4,), *, n_samples: int = 32, seq_len: int = 128,
              group_size: int = 128) -> list[dict]:
    """One row per grid, bit width and seed for GPTQ, and one per grid and bit width for RTN (seed None):
    {"grid", "bits", "method", "seed", "ppl_fast", "seconds"}."""
    import torch

    from .. import models
    from ..tokens import calibration_batches
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

    from ..results import save_result

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
