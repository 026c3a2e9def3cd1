"""The layer Hessian GPTQ needs, and the upper Cholesky factor of its (dampened) inverse.

For a linear layer y = W x, GPTQ minimises the squared output error over calibration inputs,
row by row of W:

    E(W_hat) = (1/n) * sum_t || (W_hat - W) x_t ||^2 = 1/2 * tr( dW H dW^T ),   dW = W_hat - W,
    H = 2/n * sum_t x_t x_t^T = 2/n * X X^T          (X: in_features x n, one column per token)

H depends only on the inputs, so one H serves every row (and every layer that reads the same x).

    acc = HessianAccumulator(in_features)
    acc.add_batch(x)            # x (..., in_features): any batch/sequence shape, any float dtype
    U, damp = inverse_cholesky_upper(acc.H, percdamp=0.01, name="model.layers.0.mlp.down_proj")

Counting: n counts *tokens* (rows of x), so H is the average of 2 x x^T per token. The reference
gptq.py counts sequences instead, which makes its H (and its loss) seq_len times larger; the
quantized weights are the same, since dampening is relative to mean(diag H).
"""

from __future__ import annotations

import math
import warnings

import torch


class HessianAccumulator:
    """Running H = 2/n * sum_t x_t x_t^T in float32 over batches of inputs (n = tokens seen).

    Adding a batch of m tokens (the columns of X) keeps H an average without storing the inputs:
        H <- H * n / (n + m) + 2 / (n + m) * X X^T;   n <- n + m
    (the reference writes the same as X <- sqrt(2 / (n + m)) X;  H <- H * n / (n + m) + X X^T).
    """

    def __init__(self, in_features: int, device: torch.device | str | None = None):
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive int, got {in_features!r}.")
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0

    @torch.no_grad()
    def add_batch(self, x: torch.Tensor) -> None:
        """Add inputs x of shape (..., in_features): every leading index is one token."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"add_batch needs a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}.")
        d = self.H.shape[0]
        if x.shape[-1] != d:
            raise ValueError(f"inputs have {x.shape[-1]} features, the Hessian expects {d} (the layer's in_features).")
        X = x.detach().reshape(-1, d).to(device=self.H.device, dtype=torch.float32)  # (m, in): tokens as rows
        m = X.shape[0]
        if m == 0:
            return
        # H <- H * n/(n+m) + 2/(n+m) * X^T X   (X holds the new tokens as rows)
        self.H.mul_(self.n / (self.n + m)).addmm_(X.T, X, alpha=2 / (self.n + m))
        self.n += m

    def hook(self):
        """A forward hook for nn.Module.register_forward_hook that adds the module's input."""

        def _hook(module, args, output):
            self.add_batch(args[0])

        return _hook


def fix_dead_columns(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """In place: inputs that were always 0 (H[i, i] == 0) give no information about column i.
    Set H[i, i] = 1 (so H is invertible) and W[:, i] = 0 (the column never mattered). Returns the mask."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    return dead


def inverse_cholesky_upper(H: torch.Tensor, percdamp: float = 0.01, *, name: str = "layer",
                           max_tries: int = 4) -> tuple[torch.Tensor, float]:
    """U = upper Cholesky factor of (H + lambda I)^-1, i.e. (H + lambda I)^-1 = U^T U; returns (U, lambda).

    lambda = percdamp * mean(diag H). Computed as the reference does it, without forming the
    inverse explicitly: L = chol(H + lambda I) (lower), Hinv = cholesky_inverse(L), U = chol(Hinv, upper).
    If a factorisation fails (H is not positive definite in float32), lambda is raised 10x, with a
    warning naming the layer, up to `max_tries` times; then a ValueError says what to do.
    """
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"{name}: the Hessian must be a square (in, in) matrix, got shape {tuple(H.shape)}.")
    if not torch.isfinite(H).all():
        raise ValueError(f"{name}: the Hessian holds NaN or inf; check the calibration inputs of this layer.")
    if not (isinstance(percdamp, (int, float)) and math.isfinite(percdamp) and percdamp >= 0):
        raise ValueError(f"percdamp must be a finite number >= 0 (0.01 is usual), got {percdamp!r}.")
    H = H.to(torch.float32)
    mean_diag = torch.diag(H).mean().item()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    rel = percdamp if percdamp > 0 else 0.01  # a zero start can only be raised from some positive value
    for attempt in range(max_tries):
        frac = percdamp if attempt == 0 else rel * 10**attempt
        damp = frac * mean_diag
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if info.item() == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info.item() == 0 and torch.isfinite(U).all():
                return U, damp
        if attempt + 1 < max_tries:
            nxt = rel * 10 ** (attempt + 1)
            warnings.warn(f"GPTQ {name}: the dampened Hessian is not positive definite with percdamp={frac:g}; "
                          f"retrying with percdamp={nxt:g}.", RuntimeWarning, stacklevel=2)
    raise ValueError(f"GPTQ {name}: the Hessian stays singular (not positive definite) even with percdamp="
                     f"{rel * 10 ** (max_tries - 1):g}. Check this layer's calibration inputs (NaN, all zeros, too few "
                     f"tokens) or use more calibration samples.")
