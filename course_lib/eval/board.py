"""Reading the recorded leaderboard: its table, the Pareto front, the quality-against-size plot, the seed's claims.

    rec = load_leaderboard()                           # data/results/cpu_leaderboard.json
    print_table(leaderboard_table(rec.rows, "course-model"))
    pareto_front(rec.rows)                             # {model: [rows on the front, by size]}
    fig, axes = plot_leaderboard(rec.rows)
    print_table(seed_claims(rec.rows))

Everything here works on the recorded rows (plain dicts), so the notebook needs no model, no GPU and no time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# seed 003, 6.8 Q1 ("INT8 量化：精度损失<1%", "INT4 量化：精度损失1-3%", "INT2：精度显著下降（不实用）"), read as
# the perplexity change against float: INT8 below +1%, INT4 from +1% to +3%, INT2 unusable, taken here as
# perplexity at least doubled (a change of +100% or more). INT3 has no claim in the seed; its row shows the curve.
SEED_CLAIMS = {8: ("INT8: loss < 1%", None, 0.01), 4: ("INT4: loss 1-3%", 0.01, 0.03),
               3: ("INT3: (no claim)", None, None), 2: ("INT2: unusable (ppl at least doubled)", 1.0, None)}
CLAIM_METHODS = ("RTN", "GPTQ")


def load_leaderboard(name: str = "cpu_leaderboard"):
    """The recorded leaderboard (core.results.Recorded): rows, summary (per model: protocol, calibration,
    lm-eval limits, variants left out and why), device and versions."""
    from ..core.results import load_result

    return load_result(name)


def _models(rows) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in rows))


def _iv(point, lo, hi, pct: bool = False) -> str:
    from ..core.tables import fmt

    if point is None:
        return "-"
    if pct:
        return f"{point:+.1%} [{lo:+.1%}, {hi:+.1%}]"
    return f"{fmt(point)} [{fmt(lo)}, {fmt(hi)}]"


def _pm(row: dict, key: str) -> str:
    from ..core.tables import fmt

    value, se = row.get(key), row.get(f"{key}_stderr")
    if value is None:
        return "-"
    return f"{fmt(value, 3)} ± {fmt(se, 2)}" if se is not None and not math.isnan(se) else fmt(value, 3)


def leaderboard_table(rows: Sequence[dict], model: str | None = None) -> list[dict]:
    """Rows for print_table: size (MB, measured or computed), bits per weight, perplexity [95% interval], change
    against float32 [paired 95% interval] and its verdict, lm-eval accuracy ± standard error, ms per token, its
    ratio to float32 (timed in alternation) and whether that speed is a simulation's."""
    out = []
    for r in rows:
        if model is not None and r["model"] != model:
            continue
        line = {"variant": r["variant"], "MB": r["bytes"] / 1e6, "bytes": r["bytes_how"], "bpw": r["bpw"],
                "ppl [95%]": _iv(r["ppl"], r["ppl_lo"], r["ppl_hi"]),
                "vs float32 [95%]": _iv(r["change"], r["change_lo"], r["change_hi"], pct=True),
                "verdict": r["verdict"], "nextline acc_mi": _pm(r, "acc_mutual_info")}
        if any("qa_acc" in x for x in rows if x["model"] == r["model"]):
            line["qa acc"] = _pm(r, "qa_acc")
        line.update({"ms/token": r["ms_per_token"], "x float": r.get("time_vs_float"),
                     "simulated": "yes" if r["simulated"] else "no"})
        if model is None:
            line = {"model": r["model"], **line}
        out.append(line)
    return out


def pareto_front(rows: Sequence[dict], x: str = "bytes", y: str = "ppl", *,
                 exclude: Sequence[str] = ()) -> dict[str, list[dict]]:
    """Per model, the rows that no other row of that model dominates: none has x <= and y <= with one of them
    strictly smaller (lower is better for both). Equal points do not dominate each other: both stay on the
    front. Rows lacking x or y, and rows of the families in `exclude` (e.g. ("distill",): compressions of the
    model itself only), are left out. Each front is sorted by x."""
    fronts: dict[str, list[dict]] = {}
    for model in _models(rows):
        pts = [r for r in rows if r["model"] == model and r.get(x) is not None and r.get(y) is not None
               and r.get("family") not in exclude]

        def dominated(a: dict) -> bool:
            return any(b[x] <= a[x] and b[y] <= a[y] and (b[x] < a[x] or b[y] < a[y]) for b in pts)

        fronts[model] = sorted((r for r in pts if not dominated(r)), key=lambda r: (r[x], r[y]))
    return fronts


FAMILY_LABELS = {"reference": "float", "rtn": "RTN", "gptq": "GPTQ", "awq": "AWQ", "smoothquant": "SmoothQuant",
                 "bnb": "bitsandbytes", "mixed": "mixed precision", "gguf": "GGUF", "prune": "pruned",
                 "distill": "distilled"}


def plot_leaderboard(rows: Sequence[dict], models: Sequence[str] | None = None, *, label_front: bool = True,
                     exclude: Sequence[str] = (), y_clip: float | None = 2.0):
    """Perplexity against bytes on disk (log scale), one panel per model: every variant by family, the Pareto front
    (of the families not in `exclude`) as a step line, the float32 perplexity as a dashed line. `y_clip`: the
    y axis stops at that multiple of the float perplexity, and variants above it are drawn on the top edge as
    triangles and named there with their perplexity (None: a log axis holding everything). Returns (fig, axes)."""
    from matplotlib.ticker import FuncFormatter

    from ..core.plotting import PALETTE, new_axes

    models = list(models or _models(rows))
    fig, axes = new_axes(ncols=len(models), figsize=(6.0 * len(models), 4.6))
    axes = list(axes) if len(models) > 1 else [axes]
    fronts = pareto_front(rows, exclude=exclude)
    others = [c for c in PALETTE if c != "#000000"] + ["#7f7f7f", "#8c564b"]   # black is the float model's
    colors = {"reference": "black", **{fam: others[k % len(others)] for k, fam in
                                       enumerate(f for f in FAMILY_LABELS if f != "reference")}}
    for ax, model in zip(axes, models):
        mine = [r for r in rows if r["model"] == model]
        ref = next((r for r in mine if r["variant"] == "float32"), None)
        top = ref["ppl"] * y_clip if (ref and y_clip) else math.inf
        clipped = []
        for k, fam in enumerate(FAMILY_LABELS):
            pts = [r for r in mine if r["family"] == fam]
            inside = [r for r in pts if r["ppl"] <= top]
            above = [r for r in pts if r["ppl"] > top]
            if inside:
                ax.scatter([r["bytes"] / 1e6 for r in inside], [r["ppl"] for r in inside], s=22, color=colors[fam],
                           marker="os^vD<>ph*"[k % 10], label=FAMILY_LABELS[fam], zorder=3)
            if above:   # off the scale: on the top edge
                ax.scatter([r["bytes"] / 1e6 for r in above], [top] * len(above), s=30, color=colors[fam],
                           marker="^", zorder=3, clip_on=False,
                           label=None if inside else FAMILY_LABELS[fam])
                clipped += above
        front = fronts.get(model, [])
        ax.step([r["bytes"] / 1e6 for r in front], [min(r["ppl"], top) for r in front], where="post", color="gray",
                lw=1, zorder=2, label="Pareto front")
        if label_front:
            for n, r in enumerate(front):
                ax.annotate(r["variant"], (r["bytes"] / 1e6, min(r["ppl"], top)), fontsize=6, textcoords="offset points",
                            xytext=(3, 4 if n % 2 == 0 else -9))
        if clipped:
            ax.text(0.99, 0.92, "above the axis: " + ", ".join(f"{r['variant']} ({r['ppl']:.3g})" for r in
                                                                sorted(clipped, key=lambda r: r["ppl"])),
                    transform=ax.transAxes, ha="right", va="top", fontsize=6, wrap=True)
        if ref:
            ax.axhline(ref["ppl"], color="gray", ls="--", lw=0.8)
        ax.set(xscale="log", xlabel="bytes on disk (MB)", ylabel="perplexity", title=model)
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):   # 6, 10, 20: not 6 x 10^0
            axis(FuncFormatter(lambda x, _: f"{x:g}"))
        if math.isfinite(top):
            low = min(r["ppl"] for r in mine)
            ax.set_ylim(low - 0.05 * (top - low), top)
        else:
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig, axes


def judge(lo: float, hi: float, low: float | None, high: float | None) -> str:
    """A claimed range [low, high] of the change (None: unbounded) against its measured 95% interval [lo, hi]:
    "holds" (inside), "fails: smaller loss" (all below low), "fails: larger loss" (all above high),
    "undecided" (the interval crosses a bound), "no claim" (no bound at all)."""
    if low is None and high is None:
        return "no claim"
    low, high = -math.inf if low is None else low, math.inf if high is None else high
    if low <= lo and hi <= high:
        return "holds"
    if hi < low:
        return "fails: smaller loss"
    if lo > high:
        return "fails: larger loss"
    return "undecided (interval crosses a bound)"


def seed_claims(rows: Sequence[dict], methods: Sequence[str] = CLAIM_METHODS, claims: dict | None = None) -> list[dict]:
    """Seed 003's claim per model, method and bit width, with the measured paired perplexity change [95%].
    `claims`: {bits: (label, lowest change, highest change)}, default SEED_CLAIMS (where "unusable" is read as
    perplexity at least doubled: pass another bound to see how the verdict depends on that reading)."""
    out = []
    for model in _models(rows):
        by_name = {r["variant"]: r for r in rows if r["model"] == model}
        for bits, (claim, low, high) in (claims or SEED_CLAIMS).items():
            for method in methods:
                r = by_name.get(f"{method} {bits}-bit")
                if r is None:
                    continue
                out.append({"model": model, "claim": claim, "variant": r["variant"], "settings": r["settings"],
                            "change [95%]": _iv(r["change"], r["change_lo"], r["change_hi"], pct=True),
                            "verdict": judge(r["change_lo"], r["change_hi"], low, high)})
    return out
