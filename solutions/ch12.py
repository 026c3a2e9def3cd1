"""Reference solutions for chapter 12's exercises (kept out of the notebooks)."""

import math

import torch


def bits_per_byte(nll_sum: float, n_bytes: int) -> float:
    # nats -> bits (divide by ln 2), then per byte of the text
    return nll_sum / math.log(2) / n_bytes


def strided_perplexity(window_rows: list[torch.Tensor], seq_len: int, stride: int) -> float:
    # Window i begins at token i * stride; its row[j] is the loss of token i * stride + j + 1.
    total, count = 0.0, 0
    scored_until = 1  # the tokens before this one are scored already (token 0 never is: it has no context)
    for i, row in enumerate(window_rows):
        begin = i * stride
        end = begin + len(row) + 1  # min(begin + seq_len, n_tokens)
        new = row[max(scored_until - begin - 1, 0):]  # skip what an earlier window scored, with more context
        total += new.double().sum().item()
        count += new.numel()
        scored_until = end
    return math.exp(total / count)


def paired_interval(nll_a: torch.Tensor, nll_b: torch.Tensor, counts: torch.Tensor, idx: torch.Tensor,
                    level: float) -> tuple[float, float, float]:
    a, b, c = nll_a.double(), nll_b.double(), counts.double()
    # ppl_B / ppl_A = exp(mean nll_B - mean nll_A), the means over every token of the windows
    change = math.exp(((b.sum() - a.sum()) / c.sum()).item()) - 1
    # one row of idx = one draw of windows, the same windows for both models: that is the pairing
    draws = torch.exp((b[idx].sum(1) - a[idx].sum(1)) / c[idx].sum(1)) - 1
    tail = (1 - level) / 2
    lo, hi = torch.quantile(draws, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return change, lo.item(), hi.item()


def acc_norm(lls: torch.Tensor, choices: list[list[str]], gold: torch.Tensor) -> float:
    # lm-eval divides each log-likelihood by the choice's length in characters (not bytes, not tokens)
    chars = torch.tensor([[len(choice) for choice in item] for item in choices], dtype=torch.float64)
    pred = (lls.double() / chars).argmax(dim=1)  # ties: the first index, as np.argmax
    return (pred == gold).double().mean().item()
