"""Checks for chapter 06: decoding GGUF's Q8_0 blocks from their bytes, and the exact budget allocation.

1. ``check_decode_q8_0``: blocks (n, 34) uint8, each block 2 bytes of a little-endian float16 scale d followed by
   32 signed int8 codes q; return W (n, 32) float32 = d * q. Compared with the ``gguf`` package's de-quantization.
2. ``check_allocate_exact``: errors (L, K) float64 and costs (L, K) int64 of K options per layer, and a budget;
   return the option index per layer (L,) int64 that minimises the summed error with the summed cost <= budget.
   Several choices can be optimal, so the check compares the *objective* of the learner's choice with the optimum
   (and refuses a choice over the budget).

Both run on random inputs from fixed seeds in several shapes, plus edge cases; after a wrong attempt a diagnosis
recomputes the usual mistakes and names the one that matches.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from . import check_tensor_cases

Q8_BLOCK, Q8_BYTES = 32, 34

# --- 1. Q8_0 --------------------------------------------------------------------------------------------------------


def _q8_blocks(n: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    import gguf

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, Q8_BLOCK)) * spread).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    return torch.from_numpy(np.ascontiguousarray(raw).reshape(n, Q8_BYTES).copy())


def decode_q8_0_cases() -> tuple[list[str], list[tuple]]:
    labels, cases = [], []
    for seed in (0, 1, 2):
        for n in (1, 7, 64):
            labels.append(f"seed {seed}, {n} blocks")
            cases.append((_q8_blocks(n, seed, spread=10.0 ** (seed - 1)),))
    zero = _q8_blocks(3, 5)
    zero[1] = 0                                        # d = 0 and every code 0
    labels.append("edge case: an all-zero block among others")
    cases.append((zero,))
    low = _q8_blocks(4, 6)
    low[:, 2:6] = 0x80                                 # code -128 (the int8 minimum; quantizers never write it)
    low[:, 6:10] = 0x7F                                # code 127
    labels.append("edge case: codes -128 and 127 in every block")
    cases.append((low,))
    neg = _q8_blocks(4, 7)
    neg[:, 1] |= 0x80                                  # the float16's sign bit (high byte, little-endian): d < 0
    labels.append("edge case: negative scales d")
    cases.append((neg,))
    return labels, cases


def reference_decode_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    import gguf

    out = gguf.quants.dequantize(blocks.numpy().reshape(-1), gguf.GGMLQuantizationType.Q8_0)
    return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(blocks.shape[0], Q8_BLOCK))


def _decode_variant(blocks: torch.Tensor, *, signed: bool = True, little: bool = True, scale: bool = True,
                    offset: int = 2) -> torch.Tensor:
    b = blocks.to(torch.uint8)
    d_bytes = b[:, :2] if little else b[:, :2].flip(1)
    d = d_bytes.contiguous().view(torch.float16).float()
    codes = b[:, offset:offset + Q8_BLOCK].contiguous()
    q = codes.view(torch.int8).float() if signed else codes.float()
    if q.shape[1] < Q8_BLOCK:
        q = torch.nn.functional.pad(q, (0, Q8_BLOCK - q.shape[1]))
    return d * q if scale else q


def _diagnose_q8_0(args: tuple, got: torch.Tensor) -> str | None:
    (blocks,) = args
    got = got.detach().to("cpu", torch.float32)
    messages = {
        "signed": ("your codes are read as unsigned bytes (0..255): they are int8, so a byte >= 128 means byte - 256. "
                   "Reinterpret them: blocks[:, 2:].contiguous().view(torch.int8)."),
        "little": ("your scale has its two bytes swapped: GGUF stores the float16 d little-endian (low byte first), "
                   "which is what blocks[:, :2].contiguous().view(torch.float16) reads on this machine."),
        "scale": "you returned the codes q without multiplying by the block's scale d.",
        "offset": ("your codes start at the wrong byte: the block is d (bytes 0-1) then 32 codes (bytes 2-33)."),
    }
    variants = ((dict(signed=False), "signed"), (dict(little=False), "little"), (dict(scale=False), "scale"),
                (dict(offset=0), "offset"), (dict(offset=1), "offset"), (dict(offset=3), "offset"))
    for kw, key in variants:
        if torch.allclose(got, _decode_variant(blocks, **kw), rtol=1e-6, atol=1e-6, equal_nan=True):
            return messages[key]
    return None


def check_decode_q8_0(fn) -> bool:
    """fn(blocks (n, 34) uint8) -> (n, 32) float32: d * q per block (d: little-endian float16, q: int8)."""
    labels, cases = decode_q8_0_cases()
    return check_tensor_cases("decode_q8_0", fn, cases, reference_decode_q8_0, atol=0.0, rtol=1e-6, labels=labels,
                              hint="Block i: d = float16 from bytes 0-1 (little-endian), q = bytes 2-33 as int8; "
                                   "W[i] = d * q in float32.",
                              diagnose=_diagnose_q8_0)


# --- 2. the exact allocation ----------------------------------------------------------------------------------------


def best_objective(errors: torch.Tensor, costs: torch.Tensor, budget: int) -> float:
    """The least sum of errors[i, j_i] with sum costs[i, j_i] <= budget (dynamic programming over the budget)."""
    best = np.full(budget + 1, np.inf)
    best[0] = 0.0
    for e_row, c_row in zip(errors.double().numpy(), costs.long().numpy()):
        new = np.full(budget + 1, np.inf)
        for e, c in zip(e_row, c_row):
            if c <= budget:
                new[c:] = np.minimum(new[c:], best[: budget + 1 - c] + e)
        best = new
    return float(best.min())


def brute_objective(errors: torch.Tensor, costs: torch.Tensor, budget: int) -> float:
    """The same by enumerating every choice (small problems only; for the tests)."""
    L, K = errors.shape
    best = float("inf")
    for idx in itertools.product(range(K), repeat=L):
        if sum(int(costs[i, j]) for i, j in enumerate(idx)) <= budget:
            best = min(best, sum(float(errors[i, j]) for i, j in enumerate(idx)))
    return best


def _score(errors: torch.Tensor, costs: torch.Tensor, budget: int, choice) -> torch.Tensor:
    """(objective, 1.0 if within budget else 0.0) of a choice; NaNs for something that is not a valid choice."""
    choice = torch.as_tensor(choice)
    L, K = errors.shape
    if choice.shape != (L,) or choice.is_floating_point() or choice.min() < 0 or choice.max() >= K:
        return torch.tensor([float("nan"), float("nan")], dtype=torch.float64)
    rows = torch.arange(L)
    cost = int(costs[rows, choice.long()].sum())
    return torch.tensor([float(errors[rows, choice.long()].double().sum()), float(cost <= budget)],
                        dtype=torch.float64)


def allocate_cases() -> tuple[list[str], list[tuple]]:
    labels, cases = [], []
    for seed, (L, K) in itertools.product((0, 1, 2), ((3, 2), (6, 4), (12, 5))):
        g = torch.Generator().manual_seed(seed)
        costs = torch.sort(torch.randint(1, 30, (L, K), generator=g), dim=1).values
        errors = torch.sort(torch.rand(L, K, generator=g, dtype=torch.float64) * 
                            torch.rand(L, 1, generator=g, dtype=torch.float64) * 3, dim=1, descending=True).values
        lo, hi = int(costs[:, 0].sum()), int(costs[:, -1].sum())
        budget = lo + (hi - lo) * (seed + 1) // 4
        labels.append(f"seed {seed}, {L} layers x {K} options, budget {budget} (cheapest {lo}, dearest {hi})")
        cases.append((errors, costs, budget))
    trap_e = torch.tensor([[1.0, 0.0], [0.6, 0.0]], dtype=torch.float64)
    trap_c = torch.tensor([[2, 12], [1, 6]])
    labels.append("edge case: upgrading layer 1 has the better error per cost, but then layer 0 no longer fits")
    cases.append((trap_e, trap_c, 12 + 1))
    tight_e = torch.tensor([[0.5, 0.2, 0.1], [0.9, 0.3, 0.0], [0.4, 0.4, 0.1]], dtype=torch.float64)
    tight_c = torch.tensor([[3, 5, 9], [2, 4, 8], [1, 6, 7]])
    labels.append("edge case: a budget that only the cheapest option everywhere fits")
    cases.append((tight_e, tight_c, 6))
    return labels, cases


def check_allocate_exact(fn) -> bool:
    """fn(errors (L, K), costs (L, K) int, budget int) -> (L,) option indices of least summed error within budget."""
    labels, cases = allocate_cases()

    def scored(errors, costs, budget):
        return _score(errors, costs, budget, fn(errors, costs, budget))

    def reference(errors, costs, budget):
        return torch.tensor([best_objective(errors, costs, budget), 1.0], dtype=torch.float64)

    def diagnose(args, got):
        if got[1].item() == 0.0:
            return ("your choice costs more than the budget: every option's cost counts, and the total must stay "
                    "<= budget (the dynamic programme's state is the budget spent so far).")
        if got[0].item() > reference(*args)[0].item():
            return ("your choice fits but is not the best: a greedy rule (best error drop per cost first) can spend "
                    "the budget on small upgrades and leave no room for a big one. Keep, for every amount of budget "
                    "spent, the least error of the layers so far: best[u] = min_j best_prev[u - cost_j] + error_j.")
        return None

    return check_tensor_cases("allocate_exact", scored, cases, reference, atol=1e-9, rtol=1e-9, labels=labels,
                              hint="Return a LongTensor of shape (L,): for each layer the index of its option.",
                              diagnose=diagnose)


EXERCISES = {"decode_q8_0": check_decode_q8_0, "allocate_exact": check_allocate_exact}
