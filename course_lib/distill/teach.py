"""Plots and summary tables for notebook 08."""

from __future__ import annotations

import math

import torch

from ..core.plotting import PALETTE
from .loss import soft_targets


def plot_soft_labels(ax, logits: torch.Tensor, tokenizer, temperatures=(0.5, 1.0, 2.0, 4.0), top: int = 12) -> None:
    """The teacher's probabilities of its `top` most likely next tokens at several temperatures."""
    order = logits.argsort(descending=True)[:top]
    labels = [tokenizer.convert_ids_to_tokens(int(i)).replace("Ġ", "␣").replace("Ċ", "\\n") for i in order]
    for k, t in enumerate(temperatures):
        ax.plot(range(top), soft_targets(logits, t)[order].numpy(), marker="o", color=PALETTE[k % len(PALETTE)],
                label=f"T = {t:g}")
    ax.set_xticks(range(top), labels, rotation=60, fontsize=8)
    ax.set_ylabel("probability")
    ax.set_title("the teacher's next-token distribution, softened")
    ax.legend()


def plot_curves(ax, curves: dict[str, list[dict]], key: str = "val_loss", teacher: float | None = None,
                title: str = "") -> None:
    """One line per run: `key` against training tokens (millions)."""
    for k, (name, log) in enumerate(curves.items()):
        ax.plot([r["tokens"] / 1e6 for r in log], [r[key] for r in log], marker=".", color=PALETTE[k % len(PALETTE)],
                label=name)
    if teacher is not None:
        ax.axhline(teacher, color="grey", linestyle="--", label="teacher")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel({"val_loss": "validation loss (nats/token)", "val_kl": "KL(teacher || student) (nats/token)"}.get(key, key))
    ax.set_title(title)
    ax.legend(fontsize=8)


def final_rows(curves: dict[str, list[dict]], baseline: str = "CE on the corpus") -> list[dict]:
    """Each run's best and final validation perplexity and KL, and its gain over the CE-only baseline."""
    base = min(r["val_loss"] for r in curves[baseline])
    rows = []
    for name, log in curves.items():
        best = min(r["val_loss"] for r in log)
        rows.append({"run": name, "best val ppl": math.exp(best), "final val ppl": math.exp(log[-1]["val_loss"]),
                     "final KL": log[-1].get("val_kl"), "ppl vs CE only": math.exp(best - base)})
    return rows

