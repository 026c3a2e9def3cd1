"""FlashAttention's forward pass in plain PyTorch: never more than one (block_q × block_k) tile of scores.

For each block of queries (the outer loop, as in FlashAttention-2), walk over the blocks of keys and
values and keep, per query row, three running quantities:

    m    the largest score seen so far
    l    Σ exp(score - m) over the keys seen so far
    acc  Σ exp(score - m) · v over the same keys (the unnormalised output)

A new tile of scores S raises the max to m' = max(m, rowmax S); everything accumulated against the
old max is rescaled by α = exp(m - m'): l ← α·l + rowsum exp(S - m'), acc ← α·acc + exp(S - m') V.
After the last tile, out = acc / l. This is the online softmax (``online_softmax``) with the value
sum carried along. Memory: O(block_q · block_k) for scores instead of O(Tq · Tk).

Causal tiles entirely above the diagonal are skipped (the work halves); the diagonal tile is masked.
The diagonal is aligned bottom-right when Tq ≠ Tk (query i is token Tk - Tq + i), and a row that
sees no key at all outputs zeros (l = 0), never NaN.
"""

from __future__ import annotations

import math

import torch

from .reference import check_shapes


def flash_attention_tiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                          block_q: int = 64, block_k: int = 64, scale: float | None = None,
                          return_lse: bool = False):
    """Attention of q (B, H, Tq, d) over k, v (B, H_kv, Tk, d), tile by tile, accumulated in float32.
    return_lse: also return each row's logsumexp of its scaled scores, log(l) + m (float32, (B, H, Tq); +inf for
    a row that sees no key), the one number per row the backward pass needs (``flash_backward_tiled``)."""
    h, h_kv = check_shapes(q, k, v)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}.")
    group = h // h_kv
    t_q, t_k, d = q.shape[2], k.shape[2], q.shape[3]
    offset = t_k - t_q  # bottom-right alignment: query i is token offset + i
    scale = 1 / math.sqrt(d) if scale is None else scale
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], device=q.device)
    for qs in range(0, t_q, block_q):
        qe = min(qs + block_q, t_q)
        qb = q[:, :, qs:qe].float() * scale
        m = torch.full(qb.shape[:-1], float("-inf"), device=q.device)
        l = torch.zeros_like(m)
        acc = torch.zeros(qb.shape, device=q.device)
        q_pos = torch.arange(qs, qe, device=q.device) + offset
        k_stop = min(t_k, qe + offset) if causal else t_k  # later key blocks are all in the future
        for ks in range(0, max(k_stop, 0), block_k):
            ke = min(ks + block_k, t_k)
            kb = k[:, :, ks:ke].float().repeat_interleave(group, dim=1)  # query head h -> KV head h // group
            vb = v[:, :, ks:ke].float().repeat_interleave(group, dim=1)
            s = qb @ kb.transpose(-2, -1)  # (B, H, bq, bk): one tile of scores
            if causal and ke - 1 > qs + offset:  # the tile crosses the diagonal
                s = s.masked_fill(torch.arange(ks, ke, device=q.device)[None, :] > q_pos[:, None], float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            shift = torch.where(torch.isinf(m_new), 0.0, m_new)  # rows with nothing visible yet
            p = torch.exp(s - shift[..., None])
            alpha = torch.exp(m - shift)  # rescales what was accumulated against the old max
            l = alpha * l + p.sum(-1)
            acc = alpha[..., None] * acc + p @ vb
            m = m_new
        out[:, :, qs:qe] = torch.where(l[..., None] > 0, acc / l.clamp(min=1e-30)[..., None], 0.0).to(q.dtype)
        lse[:, :, qs:qe] = torch.where(l > 0, m + torch.log(l.clamp(min=1e-30)), float("inf"))
    return (out, lse) if return_lse else out


def flash_backward_tiled(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                         lse: torch.Tensor, *, causal: bool = True, block_q: int = 64, block_k: int = 64,
                         scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of attention, tile by tile, from the forward pass's output and logsumexp; float32 sums.

    The forward pass kept no probabilities, only lse_i = log Σ_j exp(s_ij) per row. Any tile of them comes back
    exactly as P = exp(S - lse) from the tile's scores S = scale · Q Kᵀ. With dO the gradient of the output:

        dV  = Σ over query tiles of Pᵀ dO
        dP  = dO Vᵀ
        dS  = P ∘ (dP - Δ),  Δ_i = Σ_j P_ij dP_ij = dO_i · O_i   (the softmax's Jacobian, one number per row)
        dQ  = scale · dS K,  dK = scale · Σ over query tiles of dSᵀ Q

    Δ needs a whole row of P, which no tile holds; but Σ_j P_ij (dO_i · v_j) = dO_i · O_i, so it comes from the
    output instead. GQA: a KV head's dK and dV sum over the query heads that read it."""
    h, h_kv = check_shapes(q, k, v)
    group = h // h_kv
    t_q, t_k, d = q.shape[2], k.shape[2], q.shape[3]
    offset = t_k - t_q
    scale = 1 / math.sqrt(d) if scale is None else scale
    delta = (do.float() * out.float()).sum(-1)                      # (B, H, Tq)
    lse = lse.float()
    dq = torch.zeros(q.shape, device=q.device)
    dk = torch.zeros(k.shape[:1] + (h,) + k.shape[2:], device=q.device)   # per query head, summed at the end
    dv = torch.zeros_like(dk)
    for ks in range(0, t_k, block_k):                               # FlashAttention-2: key blocks outside
        ke = min(ks + block_k, t_k)
        kb = k[:, :, ks:ke].float().repeat_interleave(group, dim=1)
        vb = v[:, :, ks:ke].float().repeat_interleave(group, dim=1)
        q_start = max(ks - offset, 0) if causal else 0              # earlier rows cannot see these keys
        for qs in range(q_start // block_q * block_q, t_q, block_q):
            qe = min(qs + block_q, t_q)
            qb, dob = q[:, :, qs:qe].float(), do[:, :, qs:qe].float()
            s = scale * qb @ kb.transpose(-2, -1)
            if causal:
                future = torch.arange(ks, ke, device=q.device)[None, :] > (torch.arange(qs, qe, device=q.device)
                                                                           + offset)[:, None]
                s = s.masked_fill(future, float("-inf"))
            p = torch.exp(s - lse[:, :, qs:qe, None])               # P recomputed; an empty row's lse is +inf: 0
            dv[:, :, ks:ke] += p.transpose(-2, -1) @ dob
            dp = dob @ vb.transpose(-2, -1)
            ds = p * (dp - delta[:, :, qs:qe, None])
            dq[:, :, qs:qe] += scale * ds @ kb
            dk[:, :, ks:ke] += scale * ds.transpose(-2, -1) @ qb
    fold = lambda x: x.view(x.shape[0], h_kv, group, *x.shape[2:]).sum(2)  # noqa: E731
    return dq.to(q.dtype), fold(dk).to(k.dtype), fold(dv).to(v.dtype)


def tile_grid(t_q: int, t_k: int, block_q: int, block_k: int, *, causal: bool = True) -> torch.Tensor:
    """Which tiles the loop above computes: 0 skipped, 1 full, 2 masked (crosses the diagonal)."""
    offset = t_k - t_q
    rows = []
    for qs in range(0, t_q, block_q):
        qe = min(qs + block_q, t_q)
        row = []
        for ks in range(0, t_k, block_k):
            ke = min(ks + block_k, t_k)
            if causal and ks > qe - 1 + offset:
                row.append(0)
            elif causal and ke - 1 > qs + offset:
                row.append(2)
            else:
                row.append(1)
        rows.append(row)
    return torch.tensor(rows)


class LseAttention(torch.autograd.Function):
    """Attention as one differentiable function from a forward pass that keeps the logsumexp and a backward pass
    that uses it: apply(q, k, v, causal, scale, forward, backward) with forward(q, k, v, causal, scale) -> (out, lse)
    and backward(do, q, k, v, out, lse, causal, scale) -> (dq, dk, dv). The tiled PyTorch pair (TILED) and the
    Triton kernels (triton_train) both run through it; the lse is whatever their pair agrees on (natural here,
    base 2 in Triton)."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, forward, backward):
        out, lse = forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.backward_fn = causal, scale, backward
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        return (*ctx.backward_fn(do, q, k, v, out, lse, ctx.causal, ctx.scale), None, None, None, None)


def _tiled_forward(q, k, v, causal, scale):
    return flash_attention_tiled(q, k, v, causal=causal, scale=scale, return_lse=True)


def _tiled_backward(do, q, k, v, out, lse, causal, scale):
    return flash_backward_tiled(do, q, k, v, out, lse, causal=causal, scale=scale)


TILED = (_tiled_forward, _tiled_backward)
