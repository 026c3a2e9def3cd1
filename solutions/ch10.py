"""Reference solutions for chapter 10's exercises (kept out of the notebooks)."""

import math

import torch


def online_sum(m: float, l: float, x: float) -> float:
    # Rescale the old sum to the new max, then add the new term.
    m_new = max(m, x)
    return l * math.exp(m - m_new) + math.exp(x - m_new)


def score_bytes(batch: int, heads: int, seq_len: int, bytes_per_element: int) -> float:
    return batch * heads * seq_len * seq_len * bytes_per_element


def causal_tiles(n_blocks: int) -> int:
    # Query block i sees key blocks 0..i.
    return n_blocks * (n_blocks + 1) // 2


def online_softmax_stats(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    # One pass over the columns, a block at a time: the running max m and l = Σ exp(x - m) of each row.
    m = torch.full(x.shape[:-1], float("-inf"))
    l = torch.zeros(x.shape[:-1])
    for start in range(0, x.shape[-1], block):  # the last block may be shorter: slicing stops at the end
        b = x[..., start:start + block].float()
        m_new = torch.maximum(m, b.amax(-1))
        shift = torch.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet: subtract 0, not -inf
        l = l * torch.exp(m - shift) + torch.exp(b - shift[..., None]).sum(-1)  # rescale the old sum, add the block
        m = m_new
    return m, l


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, block_q: int,
                    block_k: int) -> torch.Tensor:
    t_q, t_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    offset = t_k - t_q  # bottom-right alignment: query i is token offset + i
    out = torch.zeros(q.shape)
    for qs in range(0, t_q, block_q):  # outer loop: a block of queries
        qb = q[..., qs:qs + block_q, :].float() / math.sqrt(d)
        pos = torch.arange(qs, qs + qb.shape[-2]) + offset  # the queries' token positions
        m = torch.full(qb.shape[:-1], float("-inf"))  # running max of each row's scores
        l = torch.zeros(qb.shape[:-1])  # running Σ exp(s - m)
        acc = torch.zeros(qb.shape)  # running Σ exp(s - m) · v
        for ks in range(0, t_k, block_k):  # inner loop: a block of keys and values
            if causal and ks > pos[-1]:
                break  # this key block and every later one are in the future of the whole query block
            s = qb @ k[..., ks:ks + block_k, :].float().transpose(-2, -1)  # one tile of scores
            if causal:
                cols = torch.arange(ks, ks + s.shape[-1])
                s = s.masked_fill(cols[None, :] > pos[:, None], float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            shift = torch.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
            p = torch.exp(s - shift[..., None])
            alpha = torch.exp(m - shift)  # rescales what was accumulated against the old max
            l = alpha * l + p.sum(-1)
            acc = alpha[..., None] * acc + p @ v[..., ks:ks + block_k, :].float()
            m = m_new
        out[..., qs:qs + block_q, :] = acc / torch.where(l > 0, l, 1.0)[..., None]  # a row with no key: 0
    return out


def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                       do: torch.Tensor, causal: bool, block_q: int, block_k: int):
    t_q, t_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1 / math.sqrt(d)
    delta = (do * out).sum(-1)  # Δ_i = dO_i · O_i = Σ_j P_ij dP_ij
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for ks in range(0, t_k, block_k):  # outer loop: a block of keys owns its dK, dV
        kb, vb = k[..., ks:ks + block_k, :], v[..., ks:ks + block_k, :]
        for qs in range(0, t_q, block_q):
            qb, dob = q[..., qs:qs + block_q, :], do[..., qs:qs + block_q, :]
            s = scale * qb @ kb.transpose(-2, -1)
            if causal:  # query i is token Tk - Tq + i
                pos = torch.arange(qs, qs + qb.shape[-2]) + t_k - t_q
                s = s.masked_fill(torch.arange(ks, ks + kb.shape[-2])[None, :] > pos[:, None], float("-inf"))
            p = torch.exp(s - lse[..., qs:qs + block_q, None])  # P recomputed; lse = +inf in a row with no key: 0
            dv[..., ks:ks + block_k, :] += p.transpose(-2, -1) @ dob
            ds = p * (dob @ vb.transpose(-2, -1) - delta[..., qs:qs + block_q, None])
            dq[..., qs:qs + block_q, :] += scale * ds @ kb
            dk[..., ks:ks + block_k, :] += scale * ds.transpose(-2, -1) @ qb
    return dq, dk, dv
