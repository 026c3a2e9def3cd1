"""Reference solutions for chapter 13's exercises (kept out of the notebooks). Plain Python and torch, written from
the definitions; only the hash function and its root come from course_lib."""

import torch

from course_lib.serving.blocks import ROOT, block_hash


def prefix_cache_hit(tokens: list[int], block_size: int, cached: dict[bytes, int]) -> list[int]:
    # The last token must be computed (its logits give the first output token): at most (n - 1) // B blocks.
    usable = (len(tokens) - 1) // block_size
    hit, parent = [], ROOT
    for i in range(usable):
        # A block's hash covers its tokens and, through its parent's hash, every token before them.
        h = block_hash(parent, tokens[i * block_size:(i + 1) * block_size])
        if h not in cached:
            break  # the hit is a prefix: stop at the first block that is not cached
        hit.append(cached[h])
        parent = h
    return hit


def speculative_accept(draft_tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                       u: torch.Tensor) -> tuple[int, torch.Tensor]:
    k = len(draft_tokens)
    for i in range(k):
        d = int(draft_tokens[i])
        # Accept d with probability min(1, p(d) / q(d)): u < p / q, written without a division.
        if u[i] * q[i, d] < p[i, d]:
            continue
        # The first rejection: the replacement comes from what the target wants beyond what the draft proposed.
        residual = (p[i] - q[i]).clamp(min=0)
        return i, residual / residual.sum()
    # All k accepted: a bonus token from the target's row after the last draft token.
    return k, p[k]


def admit(waiting: list[int], free_blocks: int, block_size: int, token_budget: int, max_seqs: int,
          running: int) -> list[tuple[int, int]]:
    plan = []
    for i, prompt_len in enumerate(waiting):
        if token_budget <= 0 or running + len(plan) >= max_seqs:
            break
        n = min(prompt_len, token_budget)   # chunked prefill: what the budget allows now, the rest later
        need = -(-n // block_size)          # ceil: a partly filled block is a whole block
        if need > free_blocks:
            break                           # first come, first served: nobody skips ahead
        plan.append((i, n))
        free_blocks -= need
        token_budget -= n
    return plan
