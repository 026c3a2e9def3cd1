"""Reference solutions for chapter 00's exercises (kept out of the notebooks)."""

import math

import torch


def weight_memory_gib(n_params: float, bits_per_param: float) -> float:
    return n_params * bits_per_param / 8 / 2**30


def decode_tokens_per_s(n_params: float, bits_per_param: float, bandwidth_gb_s: float) -> float:
    # Batch-1 decoding streams every weight from memory once per token.
    return bandwidth_gb_s * 1e9 / (n_params * bits_per_param / 8)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    logits = logits.clone()
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]   # the k-th largest logit of each row
        logits[logits < kth] = float("-inf")                       # ties with it stay
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        p = torch.softmax(sorted_logits, dim=-1)                   # renormalised over what top-k left
        drop_sorted = p.cumsum(-1) - p >= top_p                    # the mass before the token already reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits[drop] = float("-inf")
    return logits


@torch.no_grad()
def windowed_perplexity(model, ids: torch.Tensor, seq_len: int) -> float:
    total, count = 0.0, 0
    for begin in range(0, len(ids), seq_len):
        window = ids[begin:begin + seq_len]                         # no context from the window before
        logits = model(input_ids=window[None]).logits[0].float()
        log_probs = torch.log_softmax(logits[:-1], dim=-1)          # position t predicts token t + 1
        nll = -log_probs.gather(-1, window[1:, None]).squeeze(-1)
        total += nll.double().sum().item()
        count += nll.numel()                                        # len(window) - 1: the first has no context
    return math.exp(total / count)
