"""Unstructured and N:M pruning masks: magnitude and Wanda (no weight update).

    keep = magnitude_mask(W, 0.5)                       # one threshold for the whole layer
    keep = magnitude_mask(W, 0.5, scope="row")          # every row loses int(in * p)
    keep = wanda_mask(W, x_norm, 0.5)                   # score |W_ij| * ||X_j||_2, compared within each row
    keep = wanda_mask(W, x_norm, nm="2:4")              # at most 2 nonzeros in every 4 inputs
    W_pruned = W * keep

A mask is a bool tensor of W's shape: True = the weight is kept.

Scores. Every method prunes the weights with the lowest score:
  magnitude  s_ij = |W_ij|
  Wanda      s_ij = |W_ij| * ||X_j||_2   (X_j: input feature j over all calibration tokens)
The Wanda paper's point is the product: an input channel with large activations (the outlier
features of chapter 04) makes even its small weights matter. Its second point is the comparison
group: within each output row, not across the layer. With equal input norms it is exactly per-row
magnitude pruning.

N:M ("2:4"): at most N nonzero weights in every M consecutive inputs of a row, NVIDIA's
convention; the M - N lowest scores of every group are pruned. 2:4 and 4:8 are both 50%.

Counting. A sparsity p prunes exactly k = int(count * p) weights per comparison group (the layer,
or each row); ties are broken by position, so the count never drifts. The seed's
``torch.quantile`` + ``>`` threshold is kept in ``seed_magnitude_pruning`` to show why not.
"""

from __future__ import annotations

import math

import torch

SCOPES = ("layer", "row")


def check_sparsity(sparsity: float) -> float:
    """A sparsity must be a number in [0, 1): the fraction of weights to prune."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not math.isfinite(sparsity):
        raise TypeError(f"sparsity must be a number in [0, 1), got {sparsity!r}.")
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must lie in [0, 1) (the fraction of weights pruned), got {sparsity}; "
                         f"for 50% write 0.5.")
    return float(sparsity)


def parse_nm(nm) -> tuple[int, int] | None:
    """'2:4' or (2, 4) -> (2, 4): keep at most N of every M; None -> None (unstructured)."""
    if nm is None:
        return None
    try:
        n, m = (int(v) for v in (nm.split(":") if isinstance(nm, str) else nm))
    except (TypeError, ValueError):
        raise ValueError(f"an N:M pattern is written 'N:M' (keep N of every M consecutive inputs), e.g. '2:4'; "
                         f"got {nm!r}.") from None
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M (keep N of every M), got {n}:{m}; the hardware pattern is 2:4.")
    return n, m


def check_nm_fits(in_features: int, nm: tuple[int, int] | None, name: str = "layer") -> None:
    """An N:M pattern groups M consecutive inputs of a row: M must divide in_features."""
    if nm is not None and in_features % nm[1]:
        raise ValueError(f"{name}: the {nm[0]}:{nm[1]} pattern needs in_features divisible by {nm[1]}, got "
                         f"{in_features}; leave this layer dense (skip it) or pick M dividing {in_features}.")


def _check_weight(W: torch.Tensor, name: str = "layer") -> None:
    if not isinstance(W, torch.Tensor) or W.dim() != 2 or not W.is_floating_point():
        raise TypeError(f"{name}: W must be a 2-D floating-point (out, in) tensor, got "
                        f"{getattr(W, 'dtype', type(W).__name__)} {tuple(getattr(W, 'shape', ()))}.")


def prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of a 1-D or 2-D score tensor with the k lowest scores of each row pruned
    (a 1-D tensor is one row). Exactly k per row: ties go to the earlier position."""
    flat = (scores.unsqueeze(0) if scores.dim() == 1 else scores).float()
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    # the k-th smallest score per row is the threshold (kthvalue: a selection, no full sort)
    thresh = torch.kthvalue(flat, k, dim=-1, keepdim=True).values
    keep = flat > thresh
    if ((~keep).sum(dim=-1) > k).any():  # ties at the threshold: a stable sort decides, earlier index pruned first
        idx = torch.sort(flat, dim=-1, stable=True).indices[:, :k]
        keep = torch.ones_like(flat, dtype=torch.bool).scatter_(-1, idx, False)
    return keep.reshape(scores.shape)


def mask_from_scores(scores: torch.Tensor, sparsity: float = 0.5, *, scope: str = "row", nm=None,
                     name: str = "layer") -> torch.Tensor:
    """Keep-mask pruning the lowest scores: int(numel * p) over the layer (scope 'layer'),
    int(in * p) in every row (scope 'row'), or M - N in every group of M inputs (nm)."""
    nm = parse_nm(nm)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
    out_f, in_f = scores.shape
    if nm is not None:
        check_nm_fits(in_f, nm, name)
        n, m = nm
        groups = scores.reshape(out_f, in_f // m, m).reshape(-1, m)
        return prune_lowest(groups, m - n).reshape(out_f, in_f)
    sparsity = check_sparsity(sparsity)
    if scope == "layer":
        return prune_lowest(scores.reshape(-1), int(scores.numel() * sparsity)).reshape(out_f, in_f)
    return prune_lowest(scores, int(in_f * sparsity))


def magnitude_mask(W: torch.Tensor, sparsity: float = 0.5, *, scope: str = "layer", nm=None,
                   name: str = "layer") -> torch.Tensor:
    """Magnitude pruning: drop the smallest |W|. scope 'layer' (one threshold per layer, the usual
    reference convention) or 'row' (each output row loses the same count); nm for N:M."""
    _check_weight(W, name)
    return mask_from_scores(W.detach().abs(), sparsity, scope=scope, nm=nm, name=name)


def wanda_scores(W: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
    """Wanda's score |W_ij| * ||X_j||_2 (x_norm: the L2 norm of each input feature over the calibration tokens)."""
    _check_weight(W)
    if not isinstance(x_norm, torch.Tensor) or x_norm.shape != (W.shape[1],):
        raise ValueError(f"x_norm must hold one norm per input feature, shape ({W.shape[1]},), got "
                         f"{tuple(getattr(x_norm, 'shape', ()))}.")
    return W.detach().abs().float() * x_norm.to(W.device).float().unsqueeze(0)


def wanda_mask(W: torch.Tensor, x_norm: torch.Tensor, sparsity: float = 0.5, *, nm=None,
               name: str = "layer") -> torch.Tensor:
    """Wanda: prune the lowest |W_ij| * ||X_j|| within each output row (exactly int(in * p) per row), or N:M."""
    return mask_from_scores(wanda_scores(W, x_norm), sparsity, scope="row", nm=nm, name=name)


def norms_from_hessian(H: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """||X_j||_2 from the course Hessian H = 2/n sum_t x_t x_t^T: its diagonal is 2/n sum_t x_tj^2."""
    return (torch.diag(H).clamp(min=0) * n_tokens / 2).sqrt()


def sparsity_of(t: torch.Tensor) -> float:
    """Fraction of zeros in a weight (or of False in a keep-mask)."""
    return (t == 0).float().mean().item() if t.dtype != torch.bool else (~t).float().mean().item()


def nm_violations(W: torch.Tensor, nm="2:4") -> int:
    """How many groups of M consecutive inputs hold more than N nonzeros (0 means the pattern holds)."""
    n, m = parse_nm(nm)
    check_nm_fits(W.shape[1], (n, m))
    nonzero = (W != 0).reshape(W.shape[0], -1, m).sum(-1)
    return int((nonzero > n).sum())


def seed_magnitude_pruning(weight: torch.Tensor, sparsity: float = 0.5):
    """Seed 003 §6.3.1's magnitude_pruning, as written there (kept to show its limits):
    threshold = quantile(|W|, p); keep |W| > threshold.

    torch.quantile refuses inputs of more than 2^24 elements (a Llama-7B MLP matrix has 45M) and
    anything but float32/float64 (checkpoints are fp16/bf16); and '>' prunes every weight equal to
    the threshold, so ties (exact zeros, low-precision values) push the sparsity above p."""
    threshold = torch.quantile(weight.abs(), sparsity)
    mask = (weight.abs() > threshold).float()
    return weight * mask, mask
