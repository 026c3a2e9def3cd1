"""Reference solutions for chapter 03's exercises (kept out of the notebooks).

Plain torch, written from scratch: course_lib.gptq (inverse_cholesky_upper, gptq_quantize_weight) is what the checks
compare against, so it is not used here.
"""

import torch


def obs_update_2d(w0: float, w1: float, h00: float, h01: float, h11: float, step: float) -> float:
    # Round w0 to the grid; OBS moves w1 by delta_1 = -(w0 - q0) * Hinv[1, 0] / Hinv[0, 0].
    # For a 2x2 H, Hinv = [[h11, -h01], [-h01, h00]] / det, so Hinv[1, 0] / Hinv[0, 0] = -h01 / h11:
    # the compensation is w1 + (w0 - q0) * h01 / h11, the least-squares best w1 given q0.
    q0 = step * round(w0 / step)
    return w1 + (w0 - q0) * h01 / h11


def hessian_entry(X: list[list[float]], i: int, j: int) -> float:
    # H = 2/n X^T X: twice the average over tokens of x_t[i] * x_t[j].
    return 2 / len(X) * sum(x[i] * x[j] for x in X)


def damp_value(diag: list[float], percdamp: float) -> float:
    # Dampening adds lambda = percdamp * mean(diag H) to every diagonal entry of H.
    return percdamp * sum(diag) / len(diag)


def gptq_bits_per_weight(bits: int, group_size: int, out_features: int) -> float:
    # Each weight: its `bits`-bit code. Each group of `group_size` weights of a row: one fp16 scale (16 bits)
    # and one packed zero point (`bits` bits). Each input column: one int32 g_idx entry, shared by out_features weights.
    return bits + (16 + bits) / group_size + 32 / out_features


def damped_inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    # Dampening: lambda = percdamp * mean(diag H) on the diagonal makes H invertible even when an input was always 0
    # or there were fewer tokens than inputs.
    Hd = H + percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    # H^-1 without an explicit inverse: from the lower Cholesky factor of Hd (Hd = L L^T).
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(Hd))
    # The upper factor, H^-1 = U^T U: row j of U is row j of H^-1 after eliminating columns 0 .. j-1, over sqrt of
    # its diagonal entry (the rows GPTQ's walk needs, all at once).
    return torch.linalg.cholesky(Hinv, upper=True)


def gptq_layer(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, act_order: bool) -> torch.Tensor:
    W, H = W.clone().float(), H.clone().float()
    dead = torch.diag(H) == 0  # inputs that were always 0: their weights never mattered
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.arange(W.shape[1])
    if act_order:  # the inputs with the most energy first, while many columns are left to absorb their error
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    U = damped_inverse_cholesky(H, 0.01)
    qmax = 2 ** (bits - 1) - 1
    Q = torch.zeros_like(W)
    for j in range(W.shape[1]):
        if j % group_size == 0:  # a group starts: its scale from its columns as they are now (GPTQ's grid)
            s = W[:, j:j + group_size].abs().amax(dim=1) / (qmax + 0.5)
            s = torch.where(s > 0, s, torch.ones_like(s))  # a row of zeros: any scale works
        w = W[:, j]
        Q[:, j] = s * torch.clamp(torch.round(w / s), -qmax - 1, qmax)  # round column j to the grid
        err = (w - Q[:, j]) / U[j, j]
        W[:, j:] -= torch.outer(err, U[j, j:])  # OBS: move the columns not yet rounded (column j becomes q)
    return Q[:, torch.argsort(perm)]  # back to the original column order
