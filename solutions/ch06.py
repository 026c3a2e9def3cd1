"""Reference solutions for chapter 06's exercises (kept out of the notebooks). Plain torch, written from scratch."""

import torch


def decode_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    # Bytes 0-1: the scale d, a little-endian float16 (view reinterprets the two bytes on a little-endian machine).
    d = blocks[:, :2].contiguous().view(torch.float16).float()       # (n, 1)
    # Bytes 2-33: 32 codes, signed int8 (a byte >= 128 is negative).
    q = blocks[:, 2:34].contiguous().view(torch.int8).float()        # (n, 32)
    return d * q


def allocate_exact(errors: torch.Tensor, costs: torch.Tensor, budget: int) -> torch.Tensor:
    L, K = errors.shape
    inf = float("inf")
    # best[u]: the least error of the layers so far with exactly u budget units spent
    best = [0.0] + [inf] * budget
    picks = []
    for i in range(L):
        new, pick = [inf] * (budget + 1), [0] * (budget + 1)
        for j in range(K):
            c, e = int(costs[i, j]), float(errors[i, j])
            for u in range(c, budget + 1):
                if best[u - c] + e < new[u]:
                    new[u], pick[u] = best[u - c] + e, j
        best = new
        picks.append(pick)
    u = min(range(budget + 1), key=lambda v: best[v])     # the best end state
    choice = [0] * L
    for i in range(L - 1, -1, -1):                        # walk the picks back
        choice[i] = picks[i][u]
        u -= int(costs[i, choice[i]])
    return torch.tensor(choice, dtype=torch.long)
