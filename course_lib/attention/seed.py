"""Seed 003 §6.6.2's FlashAttention pseudo-code, transcribed, with its bugs switchable one at a time.

The seed's function, as printed:

1. ``S_ij.max(dim=1)`` returns (values, indices); ``torch.maximum`` of a tensor and that pair fails.
2. The output update is ``(l·exp(m - m_new) + O + exp(S - m_new) V) / l_new``: O is *added* to the
   rescaled sum instead of being multiplied by it, and ``exp(m.unsqueeze(1) - m_new)`` broadcasts
   to a (block, block) matrix (m_new is not unsqueezed).
3. ``m[...] = m_new`` and ``l[...] = l_new`` sit after the inner loop, so only the last query block
   ever stores its statistics; every other block reads m = -inf and l = 0 at the next key block.
4. ``return 0`` sits after the function, which therefore returns None (the text prints 0).
5. ``num_blocks = seq_len // block_size`` drops a ragged tail, and there is no causal mask.

``seed_flash_attention(Q, K, V, block_size, fixes)`` runs the transcription with the named fixes
applied ("max_values", "return_output", "output_formula", "store_stats", "ragged"): the notebook adds
them one by one and checks each stage against naive attention.
"""

from __future__ import annotations

import math

import torch

FIXES = ("max_values", "return_output", "output_formula", "store_stats", "ragged")


def seed_flash_attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, block_size: int = 64,
                         fixes: tuple[str, ...] = ()):
    """The seed's loop (non-causal, one head: Q, K, V of shape (seq_len, d_k)) with some bugs fixed."""
    unknown = set(fixes) - set(FIXES)
    if unknown:
        raise ValueError(f"Unknown fixes {sorted(unknown)}; choose from {FIXES}.")
    seq_len, d_k = Q.shape
    num_blocks = math.ceil(seq_len / block_size) if "ragged" in fixes else seq_len // block_size
    O = torch.zeros_like(Q)
    l = torch.zeros(seq_len)
    m = torch.full((seq_len,), -float("inf"))
    for j in range(num_blocks):  # outer loop: blocks of K, V
        K_j, V_j = K[j * block_size:(j + 1) * block_size], V[j * block_size:(j + 1) * block_size]
        for i in range(num_blocks):  # inner loop: blocks of Q
            rows = slice(i * block_size, (i + 1) * block_size)
            S_ij = Q[rows] @ K_j.T / math.sqrt(d_k)
            row_max = S_ij.max(dim=1).values if "max_values" in fixes else S_ij.max(dim=1)
            m_new = torch.maximum(m[rows], row_max)
            l_new = torch.exp(m[rows] - m_new) * l[rows] + torch.sum(torch.exp(S_ij - m_new.unsqueeze(1)), dim=1)
            if "output_formula" in fixes:  # rescale the old normalised output, add the new tile, renormalise
                O[rows] = ((l[rows] * torch.exp(m[rows] - m_new)).unsqueeze(1) * O[rows]
                           + torch.exp(S_ij - m_new.unsqueeze(1)) @ V_j) / l_new.unsqueeze(1)
            else:
                O[rows] = (l[rows].unsqueeze(1) * torch.exp(m[rows].unsqueeze(1) - m_new) + O[rows]
                           + torch.exp(S_ij - m_new.unsqueeze(1)) @ V_j) / l_new.unsqueeze(1)
            if "store_stats" in fixes:
                m[rows], l[rows] = m_new, l_new
        if "store_stats" not in fixes:  # the seed's indentation: once per key block, for the last i only
            m[rows], l[rows] = m_new, l_new
    return O if "return_output" in fixes else None


def stage_rows(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, block_size: int) -> list[dict]:
    """Run the seed's code with fixes added one at a time; report what happens against naive attention."""
    ref = torch.softmax(Q @ K.T / math.sqrt(Q.shape[1]), dim=-1) @ V
    rows = []
    for n in range(len(FIXES) + 1):
        fixes = FIXES[:n]
        try:
            out = seed_flash_attention(Q, K, V, block_size, fixes)
            result = "returns None" if out is None else f"max |error| {(out - ref).abs().max().item():.3g}"
        except (TypeError, RuntimeError) as exc:
            result = f"{type(exc).__name__}: {str(exc).splitlines()[0][:70]}"
        rows.append({"fixed so far": ", ".join(fixes) or "(as printed)", "result": result})
    return rows
