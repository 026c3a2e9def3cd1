"""Reading the recorded attention benchmark (``bench.py``): shares of peak, standings with their noise,
where the time goes at short sequences, and the seed's speed and length claims against the measurement.

Every function takes the rows of a result file (``course_lib.core.results.load_result``), so the notebook
prints the same analysis for whichever GPU recorded it. Rows recorded before the benchmark measured
non-causal attention, a spread or the roofs simply lack those fields; the functions say so.
"""

from __future__ import annotations

import dataclasses
import statistics

from ..core.results import RESULTS_DIR, Recorded, load_result
from .bench import SPEC_BF16_TFLOPS, attention_flops
from .tiled import tile_grid

FUSED = ("sdpa flash", "sdpa efficient", "sdpa cudnn", "course triton", "course hopper")


def load_attention(names=("h200_attention", "h100_attention")) -> Recorded:
    """The first recording that exists, newest GPU first."""
    for name in names:
        if (RESULTS_DIR / f"{name}.json").exists():
            return load_result(name)
    return load_result(names[0])  # raises, naming what is available


def roofs(rec: Recorded) -> dict:
    """Spec peak, measured bf16/fp16 matmul rate and copy bandwidth: from the recording, else its GPU's roofline file."""
    s = rec.summary
    if "matmul_tflops" in s:
        return {"spec_tflops": s.get("spec_tflops", SPEC_BF16_TFLOPS), "matmul_tflops": s["matmul_tflops"],
                "copy_gbps": s["copy_gbps"], "from": rec.name}
    other = rec.name.replace("_attention", "_roofline")
    r = load_result(other).summary
    return {"spec_tflops": SPEC_BF16_TFLOPS, "matmul_tflops": r["matmul_fp16_tflops"], "copy_gbps": r["copy_gbps"],
            "from": other}


def memory_gib(rec: Recorded) -> float:
    """The GPU's memory: recorded, or read off a device name such as 'NVIDIA H100 80GB HBM3' (GB -> GiB)."""
    import re

    if "memory_gib" in rec.summary:
        return rec.summary["memory_gib"]
    found = re.search(r"(\d+)\s*GB", rec.device)
    if not found:
        raise ValueError(f"{rec.name} records no GPU memory and its device name {rec.device!r} gives none.")
    return int(found.group(1)) * 1e9 / 2**30


def select(rec: Recorded, *, causal: bool = True, head_dim: int | None = None, lengths=None, backends=None) -> list[dict]:
    """Rows of one causality (old recordings: causal only), optionally one head_dim, some lengths and backends."""
    return [r for r in rec.rows if r.get("causal", True) == causal and (head_dim is None or r["head_dim"] == head_dim)
            and (lengths is None or r["seq_len"] in lengths) and (backends is None or r["backend"] in backends)]


def share_table(rec: Recorded, *, causal: bool, head_dim: int, lengths, backends=None) -> list[dict]:
    """ms, TFLOP/s and its share of the spec peak and of the measured matmul rate, per backend and length."""
    roof = roofs(rec)
    out = []
    for r in select(rec, causal=causal, head_dim=head_dim, lengths=lengths, backends=backends):
        tf = r.get("tflops")
        out.append({"seq_len": r["seq_len"], "backend": r["backend"], "ms": r.get("ms"), "TFLOP/s": tf,
                    "% of spec": 100 * tf / roof["spec_tflops"] if tf else None,
                    "% of matmul": 100 * tf / roof["matmul_tflops"] if tf else None,
                    "peak MiB": r.get("peak_mib"), "note": r.get("note") or ""})
    return out


def best_shares(rec: Recorded, *, causal: bool = True) -> list[dict]:
    """Each backend's best TFLOP/s over the lengths, per head_dim, as a share of the spec and of the matmul rate."""
    roof = roofs(rec)
    out = []
    for d in sorted({r["head_dim"] for r in rec.rows}):
        for b in dict.fromkeys(r["backend"] for r in rec.rows):
            done = [r for r in select(rec, causal=causal, head_dim=d, backends=(b,)) if r.get("tflops")]
            if done:
                top = max(done, key=lambda r: r["tflops"])
                out.append({"head_dim": d, "backend": b, "seq_len": top["seq_len"], "TFLOP/s": top["tflops"],
                            "% of spec": 100 * top["tflops"] / roof["spec_tflops"],
                            "% of matmul": 100 * top["tflops"] / roof["matmul_tflops"]})
    return out


def verdict(ratio: float, spread: float | None) -> str:
    """'faster' or 'slower' when the ratio is off 1 by more than the spread; 'tie' inside it; '?' with no spread."""
    if spread is None:
        return "?"
    if abs(ratio - 1) <= spread:
        return "tie"
    return "faster" if ratio > 1 else "slower"


def ratios(rec: Recorded, a: str, b: str, *, causal: bool, head_dim: int, lengths) -> list[dict]:
    """a's TFLOP/s over b's per length, with the two rows' spreads added (None in recordings without them)."""
    rows = {(r["seq_len"], r["backend"]): r for r in select(rec, causal=causal, head_dim=head_dim, lengths=lengths)}
    out = []
    for t in sorted({t for t, _ in rows}):
        ra, rb = rows.get((t, a)), rows.get((t, b))
        if not (ra and rb and ra.get("tflops") and rb.get("tflops")):
            continue
        spread = ra["spread"] + rb["spread"] if "spread" in ra and "spread" in rb else None
        ratio = ra["tflops"] / rb["tflops"]
        out.append({"seq_len": t, f"{a} / {b}": ratio, "spread": spread, "verdict": verdict(ratio, spread)})
    return out


def standing(rec: Recorded, a: str, b: str, *, causal: bool, head_dim: int, lengths) -> str:
    """One sentence: a's speed relative to b's over the lengths, and whether it is beyond the noise."""
    rows = ratios(rec, a, b, causal=causal, head_dim=head_dim, lengths=lengths)
    mode = "causal" if causal else "non-causal"
    if not rows:
        return f"{a} vs {b}, head_dim {head_dim}, {mode}: not in this recording ({rec.name})."
    vals = [r[f"{a} / {b}"] for r in rows]
    lo, hi = min(r["seq_len"] for r in rows), max(r["seq_len"] for r in rows)
    head = f"{a} / {b}, head_dim {head_dim}, {mode}, {lo}-{hi} tokens: {min(vals):.2f}-{max(vals):.2f}x"
    verdicts = {r["verdict"] for r in rows}
    if "?" in verdicts:
        return head + " (this recording has no run-to-run spread to judge the margin by)."
    if verdicts == {"faster"} or verdicts == {"slower"}:
        return head + f": {verdicts.pop()} at every length, by more than the run-to-run spread."
    if verdicts == {"tie"}:
        return head + ": a tie at every length (within the run-to-run spread)."
    return head + ": " + ", ".join(f"{r['verdict']} at {r['seq_len']}" for r in rows) + "."


def useful_fraction(seq_len: int, block_m: int, block_n: int) -> float:
    """Causal: the needed half of the score matrix (T²/2, as the FLOPs count it) over the tiles computed."""
    computed = int((tile_grid(seq_len, seq_len, block_m, block_n) > 0).sum()) * block_m * block_n
    return seq_len * seq_len / 2 / computed


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y = a + b·x."""
    n = len(xs)
    if n < 2:
        raise ValueError("A line needs at least two points.")
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def has_noncausal(rec: Recorded) -> bool:
    """Whether the recording measured attention without a causal mask too."""
    return any(r.get("causal", True) is False for r in rec.rows)


def fixed_cost(rec: Recorded, backend: str, *, head_dim: int, causal: bool = False) -> dict | None:
    """Fit ms = a + b·T over the lengths: the grid and the bytes are the same at every T (16k tokens per point),
    only the work per program grows with T, so the intercept a is the cost that does not scale with the length."""
    pts = [(r["seq_len"], r["ms"]) for r in select(rec, causal=causal, head_dim=head_dim, backends=(backend,))
           if r.get("ms")]
    if len(pts) < 3:
        return None
    a, b = fit_line(*zip(*pts))
    first = min(pts)
    return {"backend": backend, "intercept ms": a, "ms per 1k tokens": b * 1024, "T": first[0], "ms at T": first[1],
            "intercept share at T": a / first[1]}


def short_sequence(rec: Recorded, *, head_dim: int, seq_len: int = 512, causal: bool = True,
                   backend: str = "course triton") -> dict:
    """Where the time of one call goes at a short length: the floors it cannot go under, and the grid it ran."""
    row = next(r for r in select(rec, causal=causal, head_dim=head_dim, lengths=(seq_len,), backends=(backend,)))
    roof = roofs(rec)
    b, h, d = row["batch"], row["heads"], head_dim
    flops = attention_flops(b, h, seq_len, d, causal)
    nbytes = 4 * b * h * seq_len * d * 2  # Q, K, V read once and O written once, 2 bytes each
    floor = next((f["us"] for f in rec.summary.get("floor", []) if f["backend"] == backend and f["head_dim"] == d), None)
    out = {"call us": row["ms"] * 1e3, "empty call us": floor, "bytes floor us": nbytes / roof["copy_gbps"] / 1e3,
           "matmul floor us": flops / roof["matmul_tflops"] / 1e6, "FLOP per byte": flops / nbytes,
           "ridge FLOP per byte": roof["matmul_tflops"] * 1e3 / roof["copy_gbps"], "TFLOP/s": row["tflops"]}
    out["roofline TFLOP/s"] = min(roof["matmul_tflops"], out["FLOP per byte"] * roof["copy_gbps"] / 1e3)
    cfg = row.get("config")
    if cfg:
        out.update(programs=row["programs"], config=f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}, {cfg['num_warps']} warps, "
                   f"{cfg['num_stages']} stages", **{"key blocks per program": seq_len / cfg["BLOCK_N"]})
        if causal:
            out["useful share of computed tiles"] = useful_fraction(seq_len, cfg["BLOCK_M"], cfg["BLOCK_N"])
    return out


def speedups(rec: Recorded, base: str, others, *, causal: bool = True, head_dim: int, lengths) -> list[dict]:
    """How many times faster each of `others` is than `base`, per length (None where either did not run)."""
    rows = {(r["seq_len"], r["backend"]): r for r in select(rec, causal=causal, head_dim=head_dim, lengths=lengths)}
    out = []
    for t in sorted({t for t, _ in rows}):
        ref = rows.get((t, base), {}).get("ms")
        line = {"seq_len": t}
        for o in others:
            ms = rows.get((t, o), {}).get("ms")
            line[f"{o} vs {base}"] = ref / ms if ref and ms else None
        out.append(line)
    return out


def naive_longest(rec: Recorded, *, memory_gib: float, heads: int = 32, batch: int = 1,
                  backend: str = "naive") -> dict:
    """The longest sequence whose naive forward fits `memory_gib`, from the measured bytes per score element.

    Peak extra memory of the naive rows divided by B·H·T² (the score elements) gives the bytes each element
    costs (fp32 scores, probabilities and their temporaries); T_max = √(memory / (bytes · B · H)).
    """
    per = [r["peak_mib"] * 2**20 / (r["batch"] * r["heads"] * r["seq_len"] ** 2)
           for r in select(rec, causal=True, backends=(backend,)) if r.get("peak_mib") and r["seq_len"] >= 2048]
    if not per:
        raise ValueError(f"No {backend} rows with a peak memory in {rec.name}.")
    bytes_per = max(per)
    return {"bytes per score element": bytes_per,
            "longest T": int((memory_gib * 2**30 / (bytes_per * batch * heads)) ** 0.5)}


# --- the Hopper kernel's steps (tools/attention_hopper_sweep.py, tools/attention_ahead_sweep.py) ----------------

def _config(c) -> str:
    if not c:
        return ""
    text = f"{c[0]}x{c[1]}, {c[2]} warps, {c[3]} stages"
    return text + "".join(f", {n}" for n, on in zip(("warp spec", "persistent", "ahead"), c[4:]) if on)


def hopper_steps(rec: Recorded, *, head_dim: int, causal: bool) -> list[dict]:
    """Each step of the sweep at one point, best configuration first within a step: TFLOP/s, share of the spec
    peak, ratio to chapter 10's autotuned kernel, how many configurations were tried and how many failed to build."""
    rows = [r for r in rec.rows if r.get("kind") == "step" and r["head_dim"] == head_dim and r["causal"] == causal]
    base = next(r["tflops"] for r in rows if r["step"].startswith("chapter 10"))
    out = []
    for step in dict.fromkeys(r["step"] for r in rows):
        tried = [r for r in rows if r["step"] == step]
        done = [r for r in tried if r.get("tflops")]
        top = max(done, key=lambda r: r["tflops"]) if done else tried[0]
        tf = top.get("tflops")
        out.append({"step": step, "best config": _config(top.get("config")), "TFLOP/s": tf,
                    "% of spec": 100 * tf / SPEC_BF16_TFLOPS if tf else None,
                    "vs chapter 10": tf / base if tf else None, "tried": len(tried), "failed": len(tried) - len(done),
                    "error": "" if done else top.get("error", "")[:48]})
    return out


def ahead_table(rec: Recorded) -> list[dict]:
    """Scores-ahead against the same kernel without it (and the best block shape with it), mean of two rounds."""
    by = {(r["head_dim"], r["causal"], r["seq_len"], r["variant"]): r.get("tflops") for r in rec.rows}
    out = []
    for d, causal, t in dict.fromkeys(k[:3] for k in by):
        base, ahead = by[d, causal, t, "base"], by[d, causal, t, "ahead"]
        best = max(v for k, v in by.items() if k[:3] == (d, causal, t) and k[3].startswith("ahead") and v)
        out.append({"head_dim": d, "causal": causal, "seq_len": t, "cudnn": by[d, causal, t, "cudnn"], "base": base,
                    "ahead": ahead, "ahead / base": ahead / base, "best ahead / base": best / base})
    return out


# --- forward and backward for training (bench_train.py) ----------------------------------------------------------

def train_view(rec: Recorded, what: str, *, kv_group: int = 1) -> Recorded:
    """The training benchmark's forward ('fwd') or backward ('bwd') rows as forward-benchmark rows (tflops, spread,
    ms), one query-heads-per-KV-head ratio only, so that ``ratios``, ``standing`` and ``select`` read them."""
    rows = [{**r, "tflops": r.get(f"{what}_tflops"), "spread": r.get(f"{what}_spread", 0.0), "ms": r.get(f"{what}_ms")}
            for r in rec.rows if r["heads"] // r["kv_heads"] == kv_group]
    return dataclasses.replace(rec, rows=rows)


def train_table(rec: Recorded, *, head_dim: int, causal: bool, kv_group: int = 1, lengths=None) -> list[dict]:
    """Per length: forward and backward TFLOP/s of each backend, and the course's backward over flash's and cuDNN's."""
    fwd, bwd = (train_view(rec, w, kv_group=kv_group) for w in ("fwd", "bwd"))
    out = []
    for t in sorted({r["seq_len"] for r in select(bwd, causal=causal, head_dim=head_dim, lengths=lengths)}):
        row = {"seq_len": t}
        for w, view in (("fwd", fwd), ("bwd", bwd)):
            for r in select(view, causal=causal, head_dim=head_dim, lengths=(t,)):
                row[f"{w} {r['backend'].replace('sdpa ', '')}"] = r.get("tflops")
        for other in ("flash", "cudnn"):
            if row.get("bwd course") and row.get(f"bwd {other}"):
                row[f"bwd course / {other}"] = row["bwd course"] / row[f"bwd {other}"]
        out.append(row)
    return out


def loss_agreement(rec: Recorded) -> dict:
    """The training run: steps, the largest relative loss difference, both losses at the start and end, ms per step."""
    gaps = [abs(r["sdpa"] - r["course"]) / abs(r["sdpa"]) for r in rec.rows]
    return {"steps": len(rec.rows), "max rel diff": max(gaps), "median rel diff": statistics.median(gaps),
            "first loss (sdpa, course)": f"{rec.rows[0]['sdpa']:.4f}, {rec.rows[0]['course']:.4f}",
            "last loss (sdpa, course)": f"{rec.rows[-1]['sdpa']:.4f}, {rec.rows[-1]['course']:.4f}",
            **{f"ms/step {k}": v for k, v in rec.summary["ms_per_step"].items()}}
