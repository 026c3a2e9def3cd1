"""What chapter 07's notebook measures: per-layer errors, perplexity sweeps, published numbers, sizes.

    rows = layer_error_rows(model, calib, ["model.layers.3.mlp.down_proj"], sparsity=0.5)
    rows = sweep(model, tok, calib, sparsities=(0.1, 0.3, 0.5, 0.7), patterns=("2:4",))
    plot_sweep(rows, dense_ppl, ax)
    print_table(published_vs_ours(rows, dense_ppl))
"""

from __future__ import annotations

import copy
import json
import statistics
import time

import torch

from ..core.env import REPO_ROOT
from ..gptq.teach import _quiet_stderr, hessian, layer_inputs
from ..lm.perplexity import FAST, Protocol, perplexity
from .model import METHODS, prune_model
from .sparsegpt import sparsegpt_prune_weight
from .unstructured import magnitude_mask, wanda_mask

PUBLISHED = REPO_ROOT / "data" / "prune" / "published.json"
# The CPU sweep the notebook shows (recorded by `python -m course_lib.bench prune-sweep`, re-measured in part live):
# the notebook's small-profile calibration and perplexity slice, so that both give the same numbers.
CPU_SWEEP = {"n_samples": 8, "seq_len": 128, "max_tokens": 4096, "sparsities": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
             "patterns": ("2:4", "4:8")}


def load_published() -> dict:
    """The Wanda authors' LLaMA-2-7B numbers (data/prune/published.json, with its source)."""
    return json.loads(PUBLISHED.read_text())


def relative_error(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    """||(W_hat - W) X||^2 / ||W X||^2 over the tokens X (n, in): the share of the layer's output lost."""
    X, W, W_hat = X.double(), W.double(), W_hat.double()
    return (((X @ (W_hat - W).T) ** 2).sum() / ((X @ W.T) ** 2).sum()).item()


@torch.no_grad()
def layer_error_rows(model, calibration: torch.Tensor, names: list[str], *, sparsity: float = 0.5,
                     nm=None) -> list[dict]:
    """For each layer: the relative output error of magnitude, Wanda and SparseGPT on the same inputs
    (those of the dense model; one layer at a time, nothing else pruned)."""
    inputs = layer_inputs(model, names, calibration)
    rows = []
    for name in names:
        X, W = inputs[name], model.get_submodule(name).weight.detach().float()
        pruned = {"magnitude": W * magnitude_mask(W, sparsity, nm=nm),
                  "wanda": W * wanda_mask(W, X.norm(dim=0), sparsity, nm=nm),
                  "sparsegpt": sparsegpt_prune_weight(W, hessian(X), sparsity, nm=nm).weight}
        rows.append({"layer": name.removeprefix("model."), **{m: relative_error(W, Wp, X) for m, Wp in pruned.items()}})
    return rows


@torch.no_grad()
def input_norm_spread(model, calibration: torch.Tensor, names: list[str]) -> list[dict]:
    """How unequal the input features' norms ||X_j|| are, per layer: Wanda differs from per-row
    magnitude pruning only as far as they differ (max / median, and the top 1% share of sum ||X_j||^2)."""
    inputs = layer_inputs(model, names, calibration)
    rows = []
    for name in names:
        norms = inputs[name].norm(dim=0)
        energy = (norms ** 2).sort(descending=True).values
        top = max(1, len(energy) // 100)
        rows.append({"layer": name.removeprefix("model."), "max / median": (norms.max() / norms.median()).item(),
                     "top 1% energy": (energy[:top].sum() / energy.sum()).item()})
    return rows


def sweep(model, tokenizer, calibration: torch.Tensor, *, methods=METHODS, sparsities=(0.1, 0.3, 0.5, 0.7),
          patterns=("2:4",), protocol: Protocol = FAST, **prune_kw) -> list[dict]:
    """Perplexity of a copy of `model` pruned by each method at each sparsity and N:M pattern.
    One row per run: {"method", "target" ("50%" or "2:4"), "sparsity", "ppl", "seconds" (pruning only)}."""
    rows = []
    targets = [(f"{round(p * 100)}%", {"sparsity": p}) for p in sparsities] + [(nm, {"nm": nm}) for nm in patterns]
    for method in methods:
        for target, kw in targets:
            pruned = copy.deepcopy(model)
            t = time.perf_counter()
            report = prune_model(pruned, calibration, method, progress=False, **kw, **prune_kw)
            seconds = time.perf_counter() - t
            rows.append({"method": method, "target": target, "sparsity": report.overall_sparsity,
                         "ppl": perplexity(pruned, tokenizer, protocol).ppl, "seconds": seconds})
            del pruned
    return rows


def plot_sweep(rows: list[dict], dense_ppl: float, ax) -> None:
    """Perplexity against unstructured sparsity, one line per method (log scale), dense as a dashed line."""
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["sparsity"], r["ppl"]) for r in rows if r["method"] == method and r["target"].endswith("%")]
        ax.plot(*zip(*pts), marker="o", label=method)
    ax.axhline(dense_ppl, color="gray", linestyle="--", label="dense")
    ax.set(xlabel="sparsity (fraction of linear weights pruned)", ylabel="perplexity", yscale="log",
           title="course model: perplexity against sparsity")
    ax.legend()


def published_vs_ours(rows: list[dict], dense_ppl: float, published: dict | None = None) -> list[dict]:
    """Side by side, as perplexity relative to the dense model: ours (the rows of `sweep`) and the
    published LLaMA-2-7B numbers, for every pattern both have."""
    published = published or load_published()
    ours = {(r["target"], r["method"]): r["ppl"] for r in rows}
    out = []
    for p in published["rows"]:
        key = (p["pattern"], p["method"])
        if key in ours:
            out.append({"pattern": p["pattern"], "method": p["method"], "ours ppl": ours[key],
                        "ours / dense": ours[key] / dense_ppl, f"{published['model']} ppl": p["ppl"],
                        f"{published['model']} / dense": p["ppl"] / published["dense"]})
    return out


def nextline_rows(variants: dict, tokenizer, limit: int | None = None) -> list[dict]:
    """lm-eval's course_nextline accuracy of each model in `variants` ({label: model}), progress bars silenced."""
    from ..lm.eval_tasks import evaluate

    rows = []
    for label, model in variants.items():
        with _quiet_stderr("lm_eval"):
            scores = evaluate(model, tokenizer, tasks=("course_nextline",), limit=limit)
        rows.append({"variant": label, "acc": scores["acc"], "acc_mutual_info": scores["acc_mutual_info"]})
    return rows


def bits_per_weight(value_bits: int, pattern: str | None = None, *, group_size: int | None = None,
                    scale_bits: int = 16) -> float:
    """Storage per weight of the original matrix (bits): dense values, 2:4 (half the values plus a
    2-bit position each) or '50%' unstructured (half the values plus a 1-bit mask for every weight);
    one scale of `scale_bits` per group_size weights for quantized values (None: no scale)."""
    per_value = {None: value_bits, "2:4": (value_bits + 2) / 2, "50%": value_bits / 2 + 1}
    if pattern not in per_value:
        raise ValueError(f"pattern must be None, '2:4' or '50%', got {pattern!r}.")
    return per_value[pattern] + (scale_bits / group_size if group_size else 0.0)


def record_sweep(name: str | None = None, threads: int = 1) -> None:
    """Run the CPU_SWEEP on the bundled model (fp32, CPU, `threads` threads) and save it in data/results/."""
    from ..lm.models import load_model
    from ..core.results import save_result
    from ..lm.tokens import calibration_batches

    torch.set_num_threads(threads)
    model, tok = load_model(device="cpu")
    calib = calibration_batches(tok, CPU_SWEEP["n_samples"], CPU_SWEEP["seq_len"])
    protocol = Protocol(max_tokens=CPU_SWEEP["max_tokens"])
    dense = perplexity(model, tok, protocol).ppl
    rows = sweep(model, tok, calib, sparsities=CPU_SWEEP["sparsities"], patterns=CPU_SWEEP["patterns"],
                 protocol=protocol)
    name = name or "cpu_prune_sweep"
    path = save_result(name, rows, description=(
        f"Perplexity of the course model pruned by magnitude, Wanda and SparseGPT (course_lib.prune), "
        f"{CPU_SWEEP['n_samples']} x {CPU_SWEEP['seq_len']} calibration tokens, {protocol.describe()}; "
        f"seconds = pruning time on {threads} CPU thread(s)."),
        summary={"dense_ppl": dense, **{k: list(v) if isinstance(v, tuple) else v for k, v in CPU_SWEEP.items()}},
        command=f"python -m course_lib.bench prune-sweep --threads {threads}")
    print(f"wrote {path}")


# What notebook 07's section 7 shows of the 2:4 recording (python -m course_lib.bench sparse24):
# one short table per level and a plot, instead of every shape at every token count.
SPARSE24_SERIES = (("2:4 cuSPARSELt", "kernel_speedup", "2:4, kernels only"),
                   ("2:4 cuSPARSELt", "speedup", "2:4, PyTorch eager"),
                   ("dense 50% zeros", "speedup", "dense, 50% zeros"),
                   ("CSR 50%", "speedup", "CSR 50% (cuSPARSE)"))


def _series(rows: list[dict], fmt: str, column: str, dtype: str) -> dict[int, list[float]]:
    """{tokens: [speed over dense of every recorded shape]} for one format and column (untimed cells left out)."""
    out: dict[int, list[float]] = {}
    for r in rows:
        if r["format"] == fmt and r["dtype"] == dtype and r.get(column) is not None:
            out.setdefault(r["tokens"], []).append(r[column])
    return dict(sorted(out.items()))


def sparse24_overview(rows: list[dict], tokens=(1, 16, 2048, 8192), dtype: str = "float16") -> list[dict]:
    """Speed over dense cuBLAS, the median over the recorded Llama shapes, at a few token counts M."""
    table = []
    for fmt, column, label in SPARSE24_SERIES:
        series = _series(rows, fmt, column, dtype)
        table.append({"linear layer": label, **{f"M={m}": statistics.median(series[m]) if m in series else None
                                                for m in tokens}})
    return table


def sparse24_mlp_rows(mlp: list[dict]) -> list[dict]:
    """The whole-MLP-block recording as one row per (block, timing): 2:4 cuSPARSELt's speed over dense at each M."""
    table = []
    for block in dict.fromkeys(r["block"] for r in mlp):
        for column, label in (("kernel_speedup", "kernels only"), ("speedup", "PyTorch eager")):
            table.append({"MLP block": f"{block}, {label}",
                          **{f"M={r['tokens']}": r[column] for r in mlp
                             if r["block"] == block and r["format"] == "2:4 cuSPARSELt"}})
    return table


def plot_sparse24(axes, rows: list[dict], mlp: list[dict], dtype: str = "float16") -> None:
    """Left: one linear layer, median over the shapes (band: min to max). Right: a whole MLP block, 2:4."""
    from ..core.plotting import PALETTE

    ax = axes[0]
    for k, (fmt, column, label) in enumerate(SPARSE24_SERIES):
        series = _series(rows, fmt, column, dtype)
        m = list(series)
        ax.plot(m, [statistics.median(v) for v in series.values()], marker="o", color=PALETTE[k], label=label)
        ax.fill_between(m, [min(v) for v in series.values()], [max(v) for v in series.values()], color=PALETTE[k],
                        alpha=0.2)
    ax.set(title="one linear layer (Llama-7B/8B shapes)")
    ax = axes[1]
    for k, block in enumerate(dict.fromkeys(r["block"] for r in mlp)):
        pts = [r for r in mlp if r["block"] == block and r["format"] == "2:4 cuSPARSELt"]
        for column, style, label in (("kernel_speedup", "-", "kernels only"), ("speedup", "--", "eager")):
            ax.plot([r["tokens"] for r in pts], [r[column] for r in pts], style, marker="o", color=PALETTE[k],
                    label=f"{block}, {label}")
    ax.set(title="a whole MLP block, 2:4")
    for ax in axes:
        ax.axhline(1, color="gray", linestyle=":")
        ax.set(xscale="log", yscale="log", xlabel="tokens M", ylabel="speed over dense (x)")
        ax.legend(fontsize=8)
