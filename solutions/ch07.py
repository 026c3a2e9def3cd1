"""Reference solutions for chapter 07's exercises (kept out of the notebooks). Plain Python and torch, written from
the definitions."""

import torch


def wanda_first(weights: list[float], norms: list[float]) -> int:
    # Wanda's score is |w| times the input feature's norm; the lowest goes first.
    scores = [abs(w) * n for w, n in zip(weights, norms)]
    return min(range(len(scores)), key=scores.__getitem__)


def sparse24_bytes(out_features: int, in_features: int, value_bits: int) -> float:
    # Half the values survive; each carries a 2-bit index of its slot in the group of 4.
    return out_features * in_features / 2 * (value_bits + 2) / 8


def kv_group_params(hidden: int, head_dim: int, q_per_group: int) -> int:
    # k and v: one head each; q: q_per_group heads; o_proj: the same q heads' columns.
    return (2 + 2 * q_per_group) * hidden * head_dim


def wanda_keep_mask(W, X, sparsity, nm):
    # Wanda's score |W_ij| * ||X_j||_2, compared within each row (or within each group of M inputs of a row).
    scores = W.abs() * X.norm(dim=0)[None, :]
    if nm is None:
        groups, k = scores, int(W.shape[1] * sparsity)          # one comparison group per row
    else:
        n, m = nm
        groups, k = scores.reshape(-1, m), m - n                # M consecutive inputs of a row per group
    keep = torch.ones_like(groups, dtype=torch.bool)
    if k > 0:
        lowest = groups.argsort(dim=1, stable=True)[:, :k]      # stable: among equal scores the earlier input goes
        keep.scatter_(1, lowest, False)
    return keep.reshape(W.shape)


def sparsegpt_block(W, U, i1, i2, sparsity, nm):
    # One block of SparseGPT: choose the mask on the block's current weights, prune column by column, spreading each
    # column's error over the block's later columns (OBS), then over every column after the block at once.
    W = W.clone()
    W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
    d = torch.diag(U1)
    keep = torch.ones_like(W1, dtype=torch.bool)
    if nm is None:  # the k least salient weights of the whole block, jointly over its rows and columns
        saliency = ((W1 / d) ** 2).reshape(-1)
        keep.view(-1)[saliency.argsort(stable=True)[:int(saliency.numel() * sparsity)]] = False
    err_block = torch.zeros_like(W1)
    for j in range(i2 - i1):
        if nm is not None and j % nm[1] == 0:  # a group of M columns starts: its mask, on the updated weights
            n, m = nm
            saliency = (W1[:, j:j + m] / d[j:j + m]) ** 2
            lowest = saliency.argsort(dim=1, stable=True)[:, :m - n]
            keep[:, j:j + m] = torch.ones_like(saliency, dtype=torch.bool).scatter(1, lowest, False)
        w = W1[:, j].clone()
        q = w * keep[:, j]
        err = (w - q) / d[j]
        W1[:, j:] -= torch.outer(err, U1[j, j:])
        W1[:, j] = q
        err_block[:, j] = err
    W[:, i1:i2] = W1
    W[:, i2:] -= err_block @ U[i1:i2, i2:]
    return W
