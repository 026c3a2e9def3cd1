"""How sure is a difference? Bootstrap intervals over evaluation windows, and lm-eval's accuracies.

    iv = bootstrap_ppl(wl.nll_sums, wl.counts)                  # 95% interval of one model's perplexity
    d = paired_bootstrap(base.nll_sums, quant.nll_sums, base.counts)   # ppl_B / ppl_A - 1, paired by window
    d.verdict                                                    # "B worse", "B better" or "tie"
    mc_accuracies(lls, choices, gold)                           # acc, acc_norm, acc_bytes as lm-eval scores them

Why windows and not tokens: neighbouring tokens share context and difficulty, so their losses are not
independent; a window (256 tokens) is the unit the protocol scores, and resampling whole windows keeps the
dependence inside them. Why paired: two models scored on the same windows share most of their variation
(a hard passage is hard for both), so the difference's interval is far narrower than either model's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class Interval:
    point: float
    lo: float
    hi: float
    level: float

    def __str__(self) -> str:
        return f"{self.point:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


@dataclass(frozen=True)
class Paired:
    """The relative change ppl_B / ppl_A - 1 with its paired bootstrap interval."""

    change: float
    lo: float
    hi: float
    level: float

    @property
    def verdict(self) -> str:
        return "B worse" if self.lo > 0 else "B better" if self.hi < 0 else "tie"

    def __str__(self) -> str:
        return f"{self.change:+.2%} [{self.lo:+.2%}, {self.hi:+.2%}]"


def _check_windows(nll_sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    nll_sums = torch.as_tensor(nll_sums, dtype=torch.float64).flatten()
    counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if nll_sums.shape != counts.shape:
        raise ValueError(f"nll_sums and counts need one entry per window: got {nll_sums.numel()} and {counts.numel()}.")
    if nll_sums.numel() < 2:
        raise ValueError("A bootstrap needs at least 2 windows; score more tokens (a larger max_tokens).")
    if (counts <= 0).any():
        raise ValueError("Every window must score at least one token.")
    return nll_sums, counts


def _check_level(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an int of at least 100 (1000-10000 is usual), got {n_boot!r}.")


def resample_indices(n_windows: int, n_boot: int, seed: int = 0) -> torch.Tensor:
    """(n_boot, n_windows) window indices drawn with replacement, from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_windows, (n_boot, n_windows), generator=g)


def _quantiles(values: torch.Tensor, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    q = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=values.dtype))
    return q[0].item(), q[1].item()


def bootstrap_ppl(nll_sums, counts, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of exp(sum nll / sum tokens), resampling whole windows."""
    s, c = _check_windows(nll_sums, counts)
    _check_level(level, n_boot)
    idx = resample_indices(len(s), n_boot, seed)
    boots = torch.exp(s[idx].sum(1) / c[idx].sum(1))
    lo, hi = _quantiles(boots, level)
    return Interval(math.exp((s.sum() / c.sum()).item()), lo, hi, level)


def paired_bootstrap(nll_sums_a, nll_sums_b, counts, *, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> Paired:
    """ppl_B / ppl_A - 1 over the same windows, each bootstrap draw taking the same windows for both models.

    Both models must have been scored on the same tokens (same tokenizer and protocol): `counts` is shared."""
    a, c = _check_windows(nll_sums_a, counts)
    b, _ = _check_windows(nll_sums_b, counts)
    _check_level(level, n_boot)
    idx = resample_indices(len(a), n_boot, seed)
    tokens = c[idx].sum(1)
    change = torch.exp((b[idx].sum(1) - a[idx].sum(1)) / tokens) - 1  # ppl_B / ppl_A = exp(mean nll_B - mean nll_A)
    lo, hi = _quantiles(change, level)
    return Paired(math.exp(((b.sum() - a.sum()) / c.sum()).item()) - 1, lo, hi, level)


def unpaired_bootstrap(nll_sums_a, nll_sums_b, counts, *, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> Paired:
    """The same change with independent draws for A and B: what ignoring the pairing costs (a wider interval)."""
    a, c = _check_windows(nll_sums_a, counts)
    b, _ = _check_windows(nll_sums_b, counts)
    _check_level(level, n_boot)
    ia, ib = resample_indices(len(a), n_boot, seed), resample_indices(len(a), n_boot, seed + 1)
    change = torch.exp(b[ib].sum(1) / c[ib].sum(1) - a[ia].sum(1) / c[ia].sum(1)) - 1
    lo, hi = _quantiles(change, level)
    return Paired(math.exp(((b.sum() - a.sum()) / c.sum()).item()) - 1, lo, hi, level)


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's standard error of a mean: the sample standard deviation (n - 1) over sqrt(n)."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    if x.numel() < 2:
        raise ValueError("A standard error needs at least 2 values.")
    return (x.std(unbiased=True) / math.sqrt(x.numel())).item()


def mc_predictions(lls, choices: Sequence[Sequence[str]], lls_unconditional=None) -> dict[str, torch.Tensor]:
    """lm-eval's multiple-choice picks, per item: argmax of the log-likelihood (acc), of the log-likelihood
    divided by the choice's length in characters (acc_norm), in UTF-8 bytes (acc_bytes), and of the
    log-likelihood minus the choice's log-likelihood without the context (acc_mutual_info). Ties: the first."""
    lls = torch.as_tensor(lls, dtype=torch.float64)
    if lls.dim() != 2 or lls.shape[0] != len(choices) or any(len(c) != lls.shape[1] for c in choices):
        raise ValueError(f"lls must be (items, choices) matching `choices`; got {tuple(lls.shape)} for "
                         f"{len(choices)} items.")
    chars = torch.tensor([[len(c) for c in item] for item in choices], dtype=torch.float64)
    nbytes = torch.tensor([[len(c.encode("utf-8")) for c in item] for item in choices], dtype=torch.float64)
    out = {"acc": lls.argmax(1), "acc_norm": (lls / chars).argmax(1), "acc_bytes": (lls / nbytes).argmax(1)}
    if lls_unconditional is not None:
        out["acc_mutual_info"] = (lls - torch.as_tensor(lls_unconditional, dtype=torch.float64)).argmax(1)
    return out


def mc_accuracies(lls, choices: Sequence[Sequence[str]], gold, lls_unconditional=None) -> dict[str, float]:
    """Mean accuracies (and their lm-eval standard errors, as <name>_stderr) from per-choice log-likelihoods."""
    gold = torch.as_tensor(gold).flatten()
    out: dict[str, float] = {}
    for name, pred in mc_predictions(lls, choices, lls_unconditional).items():
        correct = (pred == gold).double()
        out[name] = correct.mean().item()
        out[f"{name}_stderr"] = mean_stderr(correct) if len(correct) > 1 else float("nan")
    return out


def paired_accuracy(correct_a, correct_b, z: float = 1.96) -> Interval:
    """acc_B - acc_A on the same items, with a normal interval from the per-item differences' standard error."""
    a = torch.as_tensor(correct_a, dtype=torch.float64).flatten()
    b = torch.as_tensor(correct_b, dtype=torch.float64).flatten()
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError("Pass the per-item correctness (0/1) of both models on the same items, at least 2.")
    d = b - a
    se = mean_stderr(d)
    return Interval(d.mean().item(), d.mean().item() - z * se, d.mean().item() + z * se, 0.95 if z == 1.96 else float("nan"))
