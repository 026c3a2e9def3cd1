"""The scheduler's decisions on plain integers, for chapter 13's exercises and text.

``admission_plan`` is the admission loop of ``Engine.schedule`` written on plain integers: no requests, no
block pool, no model. tests/test_serving_teach.py checks it against a real ``Engine``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .blocks import blocks_needed

__all__ = ["admission_plan"]


def admission_plan(waiting: Sequence[int], free_blocks: int, block_size: int, token_budget: int, max_seqs: int,
                   running: int) -> list[tuple[int, int]]:
    """Which waiting requests one scheduling step admits, and how many prompt tokens each computes.

    This is the admission loop of ``Engine.schedule`` written on plain integers. ``waiting`` holds the prompt
    lengths of the waiting requests in arrival order (nothing of them is cached or computed yet);
    ``free_blocks`` and ``token_budget`` are what the running requests left this step, ``running`` how many
    requests run already. Walking the queue in order, request i is admitted with n = min(prompt length,
    budget left) new tokens (a longer prompt is prefilled in chunks, the rest in later steps) while

    * the token budget left is > 0,
    * running + the requests admitted so far < max_seqs,
    * ceil(n / block_size) blocks are free (they are then taken).

    The walk stops at the first request that does not fit: first come, first served, no request skips ahead of
    an earlier one. Returns the (index in ``waiting``, n) pairs of the admitted requests.
    """
    plan: list[tuple[int, int]] = []
    for i, prompt_len in enumerate(waiting):
        if token_budget <= 0 or running + len(plan) >= max_seqs:
            break
        n = min(prompt_len, token_budget)
        need = blocks_needed(n, block_size)
        if need > free_blocks:
            break
        plan.append((i, n))
        free_blocks -= need
        token_budget -= n
    return plan
