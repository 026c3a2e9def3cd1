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
                     exclude: Sequence[str] = ()):
    """Perplexity against bytes on disk (both log scales), one panel per model: every variant by family, the
    Pareto front (of the families not in `exclude`) as a step line, the float32 perplexity as a dashed line.
    Returns (fig, axes)."""
    from ..core.plotting import PALETTE, new_axes

    models = list(models or _models(rows))
    fig, axes = new_axes(ncols=len(models), figsize=(6.0 * len(models), 4.6))
    axes = list(axes) if len(models) > 1 else [axes]
    fronts = pareto_front(rows, exclude=exclude)
    families = list(FAMILY_LABELS)
    for ax, model in zip(axes, models):
        mine = [r for r in rows if r["model"] == model]
        for k, fam in enumerate(families):
            pts = [r for r in mine if r["family"] == fam]
            if pts:
                ax.scatter([r["bytes"] / 1e6 for r in pts], [r["ppl"] for r in pts], s=22, color=PALETTE[k % 8],
                           marker="os^vD<>ph*"[k % 10], label=FAMILY_LABELS[fam], zorder=3)
        front = fronts.get(model, [])
        ax.step([r["bytes"] / 1e6 for r in front], [r["ppl"] for r in front], where="post", color="gray", lw=1,
                zorder=2, label="Pareto front")
        if label_front:
            for r in front:
                ax.annotate(r["variant"], (r["bytes"] / 1e6, r["ppl"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ref = next((r for r in mine if r["variant"] == "float32"), None)
        if ref:
            ax.axhline(ref["ppl"], color="gray", ls="--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="bytes on disk (MB)", ylabel="perplexity", title=model)
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
