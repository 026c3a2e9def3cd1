"""Reference solutions for chapter 14's questions and its closing project (kept out of the notebook).

The questions are plain torch and Python, written from their definitions; the project uses the course's own GPTQ
(chapter 03) and its checkpoint writer."""

import math

import torch

from course_lib.gptq import gptq_quantize_model, save_gptq_checkpoint
from course_lib.lm.tokens import calibration_batches


def sqnr_db(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    out_f, in_f = w.shape
    blocks = w.float().reshape(out_f, in_f // group_size, group_size)  # group k of row r: blocks[r, k]
    qmax = 2**bits - 1
    lo = blocks.amin(-1, keepdim=True).clamp(max=0.0)  # each group's range, widened to include 0
    hi = blocks.amax(-1, keepdim=True).clamp(min=0.0)
    s = (hi - lo) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))  # a group of zeros: any positive scale
    z = torch.round(-lo / s)
    w_hat = (s * (torch.clamp(torch.round(blocks / s) + z, 0, qmax) - z)).reshape(out_f, in_f)
    # signal power over noise power, per row, in decibels: 10 log10 of a ratio of squares
    signal = w.double().pow(2).sum(-1)
    noise = (w.double() - w_hat.double()).pow(2).sum(-1)
    return 10 * torch.log10(signal / noise)


def kv_crossover(weight_bytes: int, kv_bytes_per_token: int, batch: int) -> int:
    # The cache holds kv_bytes_per_token * batch * T bytes; the smallest T where that is MORE than the weights.
    return weight_bytes // (kv_bytes_per_token * batch) + 1


def traffic_saving(n: int, d: int, sram_elements: int) -> float:
    naive = 4 * n * d + 4 * n * n  # read Q, K, V and write O; write and read S, then P
    block_q = min(math.ceil(sram_elements / (4 * d)), d)  # the FlashAttention paper's query block
    tiled = 2 * n * d + 2 * d * n * math.ceil(n / block_q)  # Q read and O written once; K and V per query block
    return naive / tiled


def best_under_budget(rows: list[dict], budget_bytes: int) -> list[str]:
    fits = sorted((r for r in rows if r["bytes"] <= budget_bytes), key=lambda r: r["ppl"])
    if not fits:
        return []
    best = fits[0]
    # a variant ties with the best when its interval reaches into the best's: the data can't rank them
    return [r["variant"] for r in fits if r["lo"] <= best["hi"]]


def token_kl(ref_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    ref = torch.log_softmax(ref_logits.double(), dim=-1)  # log-probabilities, stable for any logits
    q = torch.log_softmax(q_logits.double(), dim=-1)
    # KL(p_ref || p_q) = sum_v p_ref (log p_ref - log p_q); a token with p_ref = 0 contributes nothing
    terms = torch.where(ref > -math.inf, ref.exp() * (ref - q), torch.zeros_like(ref))
    return terms.sum(-1)


def project(model, tokenizer, out_dir) -> None:
    # GPTQ at 4 bits, groups of 64 (they divide SmolLM2's 576 inputs too), the asymmetric grid, 16 x 128
    # calibration tokens; then the checkpoint with every float tensor (embeddings, norms) in 16 bits.
    calibration = calibration_batches(tokenizer, 16, 128, seed=0).to(model.device)
    report = gptq_quantize_model(model, calibration, 4, group_size=64, symmetric=False, progress=False)
    save_gptq_checkpoint(model.to(torch.float16), report, out_dir, tokenizer=tokenizer)
