"""Checks for chapter 14, the review: one question for each interview question of seed 003 §6.8, each computed from
the course's own measurements, and the closing project's check.

* Q1 ``check_sqnr_db``: the noise a 4-bit (or 2-, 3-, 8-bit) grid adds to each row of a weight matrix, in dB.
* Q2 ``check_kv_crossover`` (warm-up): the context at which a recorded model's KV cache outweighs its weights.
* Q3 ``check_traffic_saving`` (warm-up): naive over tiled attention's HBM traffic, with the paper's blocks.
* Q4 ``check_best_under_budget``: the variants of a leaderboard that fit a budget and tie for the best perplexity.
* Q5 ``check_token_kl``: KL(p_float || p_compressed) per token, from two models' logits.
* The project, ``check_project``: a compressed model's weight bytes and perplexity against the chapter's budget.

The exercises run the learner's function on random inputs (fixed seeds, several shapes) and edge cases and compare it
with course_lib; after a wrong attempt a diagnosis recomputes the usual mistakes and names the one that matches.
"""

from __future__ import annotations

import math
import numbers
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..attention.traffic import naive_traffic, paper_blocks, tiled_traffic
from ..quant.affine import fake_quantize
from . import _call, _short, check_against, check_cases, check_tensor_cases
from .ch02 import _fq_by_hand, fake_quantize_groups_cases
from .ch04 import _diagnosis

# --- Q2 and Q3 warm-ups: formulas on recorded numbers ------------------------------------------------------------------


def _one_number(fn: Callable) -> Callable:
    """fn, made to fail clearly unless it returns one real number (check_cases compares nothing else safely)."""
    def wrapped(*args):
        got = fn(*args)
        if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_complex():
            got = got.item()
        if not isinstance(got, numbers.Real) or isinstance(got, bool):
            raise TypeError(f"expected one number, got {type(got).__name__} {_short(got)}")
        return got
    return wrapped



def kv_crossover_cases() -> list[tuple[tuple, int]]:
    """(weight_bytes, kv_bytes_per_token, batch) from the H200 recording (Llama-3.2-1B shapes, bf16), two published
    configurations (fp16) and a budget that divides exactly, each with the smallest context that exceeds it."""
    from ..core.results import load_result
    from ..kv.sizes import kv_bytes_per_token, load_config, weight_bytes

    rec = load_result("h200_kv_decode").summary
    args = [(int(rec["weight_bytes"]), int(rec["kv_bytes_per_token"]), b) for b in (1, 16, 64)]
    for name, batch in (("Llama-3.1-70B", 1), ("Llama-2-7b-hf", 4)):
        cfg = load_config(name)
        args.append((int(weight_bytes(cfg)), int(kv_bytes_per_token(cfg)), batch))
    args.append((1_000_000, 1_000, 1))  # exactly 1000 tokens weigh as much as the weights: the answer is 1001
    return [(a, a[0] // (a[1] * a[2]) + 1) for a in args]


def check_kv_crossover(fn) -> bool:
    """fn(weight_bytes, kv_bytes_per_token, batch) -> the smallest context length T (tokens per sequence, an int) at
    which a batch of `batch` sequences holds MORE bytes of KV cache than the model has bytes of weights."""
    return check_cases("kv_crossover", _one_number(fn), kv_crossover_cases(), rel=1e-12,
                       hint=("the cache holds kv_bytes_per_token * batch * T bytes; the smallest whole T for which "
                             "that is strictly more than weight_bytes is weight_bytes // (kv_bytes_per_token * "
                             "batch) + 1 (an int: a context is a whole number of tokens)."))


def reference_traffic_saving(n: int, d: int, sram_elements: int) -> float:
    """course_lib.attention.traffic: naive elements over FlashAttention-2-order tiled elements, the paper's blocks."""
    block_q, block_k = paper_blocks(sram_elements, d)
    return naive_traffic(n, d)["total"] / tiled_traffic(n, d, block_q, block_k)["total"]


TRAFFIC_ARGS = ((4096, 128, 116736), (4096, 64, 116736), (65536, 128, 116736), (1024, 128, 16384),
                (1000, 64, 65536), (300, 32, 4096))  # H200 SRAM (228 KiB) in fp16; 32 KiB; ragged lengths


def check_traffic_saving(fn) -> bool:
    """fn(n, d, sram_elements) -> how many times fewer elements tiled attention moves between HBM and the chip than
    naive attention, for one head of n queries and keys of head_dim d, no mask (chapter 10, section 5):

    naive: 4nd + 4n² (Q, K, V read, O written; S and P each written and read once);
    tiled, query blocks outside (FlashAttention-2's order): Q read and O written once, K and V read once per query
    block: 2nd + 2nd·⌈n / block_q⌉, with the paper's block_q = min(⌈M / 4d⌉, d) for SRAM of M elements."""
    cases = [(a, reference_traffic_saving(*a)) for a in TRAFFIC_ARGS]
    return check_cases("traffic_saving", _one_number(fn), cases, rel=1e-9,
                       hint=("naive = 4nd + 4n²; block_q = min(ceil(M / (4d)), d); tiled = 2nd + 2dn·ceil(n / "
                             "block_q) (K and V re-read once per query block, the last block may be short); "
                             "return naive / tiled."))


# --- Q1: the noise a grid adds, per row, in decibels -------------------------------------------------------------------

SQNR_ATOL, SQNR_RTOL = 1e-3, 1e-5  # dB; float32 codes are exact (ties cleared), sums differ by rounding only


def reference_sqnr_db(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """10 log10(Σ w² / Σ (w - ŵ)²) per row, ŵ = course_lib's asymmetric group-wise RTN, in float64."""
    w_hat = fake_quantize(w, bits, symmetric=False, granularity="group", group_size=group_size)
    return 10 * torch.log10(w.double().pow(2).sum(-1) / (w.double() - w_hat.double()).pow(2).sum(-1))


def _sqnr_by_hand(w: torch.Tensor, bits: int, group_size: int, *, scale: str = "10log10", ratio: str = "s/n",
                  **fq) -> torch.Tensor:
    """SQNR with one step swapped for a usual mistake (`fq` goes to chapter 02's quantizer by hand)."""
    w64 = w.double()
    signal = w64.pow(2).sum(-1)
    noise = (w64 - _fq_by_hand(w, bits, group_size, **fq)).pow(2).sum(-1)
    r = signal / noise if ratio == "s/n" else noise / signal
    return {"10log10": lambda x: 10 * torch.log10(x), "20log10": lambda x: 20 * torch.log10(x),
            "10ln": lambda x: 10 * torch.log(x), "ratio": lambda x: x}[scale](r)


_SQNR_VARIANTS = (
    (dict(scale="20log10"), "you took 20 log10 of a ratio of powers (sums of squares): 20 log10 is for amplitudes. "
                            "SQNR = 10 log10(Σ w² / Σ (w - ŵ)²)."),
    (dict(scale="10ln"), "you took the natural log: decibels are 10 log10 (torch.log10), not 10 ln."),
    (dict(scale="ratio"), "you returned the power ratio itself: in decibels it is 10 log10(Σ w² / Σ (w - ŵ)²)."),
    (dict(ratio="n/s"), "your ratio is upside down (noise over signal): SQNR = 10 log10(Σ w² / Σ (w - ŵ)²), "
                        "positive and larger for a finer grid."),
    (dict(symmetric=True), "your grid is symmetric (s = max|w| / (2**(bits-1) - 1)); this question's is chapter "
                           "02's asymmetric grid: s = (hi - lo) / (2**bits - 1), z = round(-lo / s)."),
    (dict(groups="row"), "you used one scale per row: one per group of group_size consecutive inputs, "
                         "w.reshape(out, in // group_size, group_size)."),
    (dict(widen=False), "you didn't widen each group's range to include 0 (lo = min(min, 0), hi = max(max, 0)): "
                        "an all-positive group then gets a zero point outside the grid."),
    (dict(levels="2^b"), "you divided the range by 2**bits: the grid [0, 2**bits - 1] has 2**bits - 1 steps."),
    (dict(rounding="floor"), "you truncated (floor) instead of rounding to the nearest code."),
)
_SQNR_HINT = ("quantize as chapter 02 did (per group: lo = min(min, 0), hi = max(max, 0), s = (hi - lo) / (2**bits "
              "- 1), z = round(-lo / s), ŵ = s (clamp(round(w / s) + z, 0, 2**bits - 1) - z)); then per row "
              "10 * log10((w**2).sum(-1) / ((w - ŵ)**2).sum(-1)).")


def _same(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    return bool(torch.allclose(a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64), rtol=rtol,
                               atol=atol, equal_nan=True))


def check_sqnr_db(fn) -> bool:
    """fn(w, bits, group_size) -> a float tensor (out,): each row's signal-to-quantization-noise ratio in decibels,
    10 log10(Σ w² / Σ (w - ŵ)²) over the row, where ŵ is w fake-quantized on chapter 02's asymmetric grid with one
    scale and zero point per group of `group_size` consecutive inputs (the range widened to include 0, s = (hi - lo)
    / (2**bits - 1), z = round(-lo / s), round half to even).

    Checked against course_lib.quant.affine.fake_quantize on chapter 02's cases: w ~ N(0, 0.05²) of five shapes at 2,
    3, 4 and 8 bits, seeds 0, 1, 2, then an all-zero group, all-positive and all-negative weights, a constant group
    and an outlier (the inputs are clear of rounding ties). Tolerance: 1e-3 dB + 1e-5 relative."""
    labels, cases = fake_quantize_groups_cases()
    diagnose = _diagnosis(fn, cases, _sqnr_by_hand, _SQNR_VARIANTS,
                          lambda a, b: _same(a, b, 10 * SQNR_RTOL, 10 * SQNR_ATOL),
                          nonfinite=("your result holds NaN or inf: a group of zeros has hi - lo = 0; use s = 1 "
                                     "there so that w / s is not 0 / 0."),
                          finite=lambda got: bool(torch.isfinite(got).all()))
    return check_tensor_cases("sqnr_db", fn, cases, reference_sqnr_db, atol=SQNR_ATOL, rtol=SQNR_RTOL, labels=labels,
                              hint=_SQNR_HINT, diagnose=diagnose)


# --- Q4: the best variant that fits, with ties -------------------------------------------------------------------------

_METHODS = (("float16", 16.0, 0.0), ("RTN 8-bit", 8.25, 0.001), ("GPTQ 4-bit g128", 4.25, 0.008),
            ("AWQ 4-bit g128", 4.25, 0.010), ("RTN 4-bit g128", 4.25, 0.016), ("NF4", 4.13, 0.005),
            ("GPTQ 3-bit g128", 3.25, 0.045), ("mixed 3.5 bpw", 3.5, 0.016), ("RTN 3-bit g128", 3.25, 0.09),
            ("GPTQ 2-bit g128", 2.25, 0.47), ("2:4 + 4-bit", 3.0, 0.2), ("Q4_K_M", 4.98, 0.004))


def _leaderboard(g: random.Random, n: int) -> list[dict]:
    """n synthetic rows shaped like a leaderboard of the bundled model (the check's inputs, not measurements): bytes
    (16-bit embeddings of 2.1M parameters plus 6.3M linear weights at the method's bits), a perplexity (44.29 times a
    typical loss, with noise) and a 95% interval."""
    rows = []
    for name, bpw, loss in g.sample(_METHODS, n):
        ppl = 44.29 * (1 + loss) * (1 + g.gauss(0, 0.004))
        half = ppl * g.uniform(0.002, 0.012)
        rows.append({"variant": name, "bytes": int(2_097_152 * 2 + 6_291_456 * bpw / 8) + g.randrange(4096),
                     "ppl": ppl, "lo": ppl - half * g.uniform(0.8, 1.2), "hi": ppl + half * g.uniform(0.8, 1.2)})
    return rows


def best_under_budget_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (rows, budget_bytes)) of check_best_under_budget."""
    labels, cases = [], []
    for seed in (0, 1, 2):
        for n, budget in ((6, 8_000_000), (9, 7_000_000), (12, 9_500_000)):
            rows = _leaderboard(random.Random(100 * seed + n), n)
            labels.append(f"seed {seed}: {n} variants, budget {budget:,} bytes")
            cases.append((rows, budget))
    g = random.Random(7)
    rows = _leaderboard(g, 8)
    labels.append("edge case: a budget that no variant fits")
    cases.append((rows, 1_000_000))
    rows = _leaderboard(g, 8)
    fit = sorted(rows, key=lambda r: r["bytes"])[3]
    labels.append("edge case: the budget is exactly one variant's bytes (it fits: bytes <= budget)")
    cases.append((rows, fit["bytes"]))
    rows = [{"variant": "A (small, worse)", "bytes": 5_000_000, "ppl": 46.0, "lo": 45.8, "hi": 46.2},
            {"variant": "B (best that fits)", "bytes": 7_000_000, "ppl": 44.6, "lo": 44.4, "hi": 44.8},
            {"variant": "C (overlaps B)", "bytes": 6_000_000, "ppl": 45.0, "lo": 44.7, "hi": 45.3},
            {"variant": "D (better, too big)", "bytes": 9_000_000, "ppl": 44.3, "lo": 44.1, "hi": 44.5},
            {"variant": "E (point in B's interval? no)", "bytes": 7_500_000, "ppl": 44.9, "lo": 44.78, "hi": 45.0}]
    labels.append("edge case: a better variant that does not fit, ties by overlapping intervals")
    cases.append((rows, 8_000_000))
    rows = [{"variant": "small", "bytes": 5_000_000, "ppl": 44.9, "lo": 44.8, "hi": 45.0},
            {"variant": "best", "bytes": 7_000_000, "ppl": 44.5, "lo": 44.4, "hi": 44.6},
            {"variant": "worse", "bytes": 6_000_000, "ppl": 46.0, "lo": 45.8, "hi": 46.2}]
    labels.append("edge case: the smallest variant is neither the best nor tied with it")
    cases.append((rows, 8_000_000))
    return labels, cases


def _best_by_hand(rows: list[dict], budget: int, *, fit: str = "<=", tie: str = "overlap", order: str = "ppl",
                  pick: str = "ppl") -> list[str]:
    """The selection with one choice swapped (for the diagnosis); the defaults give the reference."""
    ok = {"<=": lambda r: r["bytes"] <= budget, "<": lambda r: r["bytes"] < budget, "none": lambda r: True}[fit]
    fits = sorted((r for r in rows if ok(r)), key=lambda r: (r["ppl"] if pick == "ppl" else r["bytes"]))
    if not fits:
        return []
    best = fits[0]
    keep = {"overlap": lambda r: r["lo"] <= best["hi"], "none": lambda r: r is best, "all": lambda r: True,
            "point": lambda r: r["ppl"] <= best["hi"]}[tie]
    chosen = [r for r in fits if keep(r)]
    key = {"ppl": lambda r: r["ppl"], "bytes": lambda r: r["bytes"], "name": lambda r: r["variant"]}[order]
    return [r["variant"] for r in sorted(chosen, key=key)]


def reference_best_under_budget(rows: list[dict], budget_bytes: int) -> list[str]:
    """The variants with bytes <= budget whose interval reaches the best fitting one's (lo <= best's hi), best
    perplexity first: what the data can rank and what it can't."""
    return _best_by_hand(rows, budget_bytes)


_BEST_VARIANTS = (
    (dict(fit="<"), "a variant whose bytes equal the budget fits it: keep bytes <= budget, not <."),
    (dict(fit="none"), "you ranked variants that do not fit: drop every row with bytes > budget first."),
    (dict(tie="none"), "you returned the best variant alone: the others whose interval reaches into the best's "
                       "(lo <= best's hi) tie with it, since the data can't rank them. Return them too."),
    (dict(tie="all"), "you returned every variant that fits: keep only those that tie with the best, lo <= best's hi."),
    (dict(tie="point"), "you compared the point estimates with the best's interval (ppl <= best's hi): two "
                        "intervals that overlap tie, so compare the variant's lo with the best's hi."),
    (dict(pick="bytes"), "you started from the smallest variant that fits: the best is the lowest perplexity among "
                         "those that fit, whatever their size."),
    (dict(order="bytes"), "right variants, wrong order: best perplexity first."),
    (dict(order="name"), "right variants, wrong order: best perplexity first, not alphabetical."),
)
_BEST_HINT = ("fits = [r for r in rows if r['bytes'] <= budget] sorted by r['ppl']; [] when none; best = fits[0]; "
              "return [r['variant'] for r in fits if r['lo'] <= best['hi']].")


def _compare_names(got: Any, expected: list[str]) -> tuple[str, Any]:
    if not isinstance(got, (list, tuple)) or not all(isinstance(x, str) for x in got):
        return f"expected a list of variant names, got {type(got).__name__} {_short(got)}.", None
    if list(got) == expected:
        return "", list(got)
    return f"expected {expected}, got {list(got)}.", list(got)


def check_best_under_budget(fn) -> bool:
    """fn(rows, budget_bytes) -> the names of the variants to choose from, best perplexity first.

    rows: a leaderboard, one dict per compressed variant with "variant" (its name), "bytes" (its weight files),
    "ppl" (its perplexity) and "lo", "hi" (the ends of its 95% interval). Among the variants with bytes <= budget,
    the best has the lowest ppl; return it and every other fitting variant that ties with it (its interval reaches
    into the best's: lo <= the best's hi), ordered by ppl. No variant fits: return [].

    Checked against reference_best_under_budget on random leaderboards (6, 9 or 12 of twelve methods, seeds 0, 1, 2)
    and edge cases: nothing fits, a variant exactly at the budget, a better variant that does not fit, intervals
    that overlap without holding each other's point estimate. The list must be equal."""
    labels, cases = best_under_budget_cases()
    diagnose = _diagnosis(fn, cases, _best_by_hand, _BEST_VARIANTS, lambda a, b: list(a) == list(b),
                          comparable=lambda a: list(a) if isinstance(a, (list, tuple)) else None)
    return check_against("best_under_budget", fn, cases, reference_best_under_budget, _compare_names, labels=labels,
                         hint=_BEST_HINT, diagnose=diagnose)


# --- Q5: KL divergence per token ---------------------------------------------------------------------------------------

KL_ATOL, KL_RTOL = 2e-5, 1e-4  # float32 log-softmax of logits near 100 is good to ~1e-5 nats


def reference_token_kl(ref_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Σ_v p_ref (log p_ref - log p_q) over the last dimension, in float64; entries with p_ref = 0 count 0."""
    ref, q = torch.log_softmax(ref_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)
    return torch.where(ref > -math.inf, ref.exp() * (ref - q), torch.zeros_like(ref)).sum(-1)


def token_kl_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (ref_logits, q_logits)) of check_token_kl: seeds x shapes x noise, then edges."""
    labels, cases = [], []
    for seed in (0, 1, 2):
        for shape, noise in (((6, 10), 0.05), ((4, 50), 0.5), ((2, 3, 32), 2.0), ((5, 4096), 0.1)):
            g = torch.Generator().manual_seed(300 + 10 * seed + len(shape))
            ref = 2 * torch.randn(*shape, generator=g)
            labels.append(f"seed {seed}, logits of shape {shape}, q = ref + {noise} x noise")
            cases.append((ref, ref + noise * torch.randn(*shape, generator=g)))
    g = torch.Generator().manual_seed(7)
    ref = 2 * torch.randn(4, 20, generator=g)
    labels.append("edge case: identical logits (KL = 0)")
    cases.append((ref, ref.clone()))
    q = ref + 0.3 * torch.randn(4, 20, generator=g)
    q[1] = ref[1] + 5.0
    labels.append("edge case: row 1 of q is row 1 of ref plus a constant (the same distribution: KL = 0)")
    cases.append((ref, q))
    ref = 2 * torch.randn(3, 30, generator=g) + 100.0
    labels.append("edge case: logits near 100 (exp overflows float32 beyond 88.7)")
    cases.append((ref, ref + 0.5 * torch.randn(3, 30, generator=g)))
    ref = 40 * torch.randn(3, 30, generator=g)
    labels.append("edge case: peaked distributions (most probabilities underflow to 0 in float32)")
    cases.append((ref, ref + 0.5 * torch.randn(3, 30, generator=g)))
    ref, q = 2 * torch.randn(4, 12, generator=g), 2 * torch.randn(4, 12, generator=g)
    ref[:, -3:] = q[:, -3:] = -math.inf
    labels.append("edge case: the last 3 tokens of the vocabulary masked (logit -inf in both)")
    cases.append((ref, q))
    return labels, cases


def _kl_by_hand(ref_logits: torch.Tensor, q_logits: torch.Tensor, *, direction: str = "pq", reduce: str = "sum",
                base: str = "e", kind: str = "kl") -> torch.Tensor:
    """The KL with one choice swapped (for the diagnosis); the defaults give the reference."""
    a, b = (ref_logits, q_logits) if direction == "pq" else (q_logits, ref_logits)
    la, lb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
    p = la.exp()
    inner = {"kl": la - lb, "ce": -lb, "logits": a.double() - b.double(), "probs": la - lb.exp()}[kind]
    terms = torch.where(la > -math.inf, p * inner, torch.zeros_like(la))
    out = terms.sum(-1) if reduce == "sum" else terms.mean(-1)
    return out / math.log(2) if base == "2" else out


_KL_VARIANTS = (
    (dict(direction="qp"), "your KL runs the other way, KL(p_q || p_ref): weight the log-ratio by the reference's "
                           "probabilities, Σ p_ref (log p_ref - log p_q). (F.kl_div(input, target) computes "
                           "KL(target || input): input = log p_q, target = p_ref.)"),
    (dict(reduce="mean"), "you averaged over the vocabulary: KL sums over it, Σ_v, one number per position."),
    (dict(base="2"), "your KL is in bits (log2): the question asks for nats (natural log)."),
    (dict(kind="ce"), "you computed the cross-entropy Σ p_ref (-log p_q): the KL subtracts p_ref's own entropy, "
                      "Σ p_ref (log p_ref - log p_q), and is 0 for identical logits."),
    (dict(kind="logits"), "you used raw logits in the log-ratio: normalise both first, log p = log_softmax(logits)."),
    (dict(kind="probs"), "you compared log p_ref with p_q (not log p_q): F.kl_div's input must be log-probabilities."),
)
_KL_NONFINITE = ("your result holds NaN or inf: take log-probabilities with torch.log_softmax (log(softmax(x)) "
                 "underflows to log 0 = -inf, exp(x) overflows beyond 88.7), and count the terms where p_ref = 0 "
                 "(a logit of -inf) as 0, not 0 x (-inf - (-inf)).")
_KL_HINT = ("lp = torch.log_softmax(ref_logits, -1); lq = torch.log_softmax(q_logits, -1); KL = (lp.exp() * (lp - "
            "lq)) summed over the last dimension, with the terms where lp is -inf set to 0.")


def check_token_kl(fn) -> bool:
    """fn(ref_logits, q_logits) -> KL(p_ref || p_q) at each position, in nats: a tensor of the logits' shape without
    the last (vocabulary) dimension. p = softmax(logits) over the last dimension; a logit of -inf is a token the
    model can never produce, and a term with p_ref = 0 contributes 0.

    Checked against reference_token_kl (float64) on random logits of shapes (6, 10), (4, 50), (2, 3, 32) and
    (5, 4096), q = ref + noise at three strengths, seeds 0, 1, 2; then identical logits, logits shifted by a
    constant, logits near 100, peaked distributions and a masked end of the vocabulary. Tolerance: 2e-5 nats +
    1e-4 relative."""
    labels, cases = token_kl_cases()
    diagnose = _diagnosis(fn, cases, _kl_by_hand, _KL_VARIANTS, lambda a, b: _same(a, b, 1e-3, 1e-4),
                          nonfinite=_KL_NONFINITE, finite=lambda got: bool(torch.isfinite(got).all()))
    return check_tensor_cases("token_kl", fn, cases, reference_token_kl, atol=KL_ATOL, rtol=KL_RTOL, labels=labels,
                              hint=_KL_HINT, diagnose=diagnose)


# --- the project: a compressed model under a memory budget ---------------------------------------------------------------

FORMATS = ("a GPTQ, AWQ or compressed-tensors checkpoint (save_gptq_checkpoint, GPTQModel, llm-compressor: chapters "
           "03, 04, 06), a GGUF file (gguf_io.write_gguf, chapter 06), a bitsandbytes model's save_pretrained "
           "(chapter 05) or a plain save_pretrained")


@dataclass(frozen=True)
class Target:
    """What the project asks of one model: weight files of at most `budget_bytes`, and a perplexity under the course
    protocol (FAST) at most `max_increase` above the float model's `float_ppl` (read from a recording)."""

    model: str
    budget_bytes: int
    max_increase: float
    float_ppl: float
    recorded_in: str

    @property
    def max_ppl(self) -> float:
        return self.float_ppl * (1 + self.max_increase)

    def describe(self) -> str:
        return (f"{self.model} in at most {self.budget_bytes / 1e6:g} MB of weight files ({self.budget_bytes:,} "
                f"bytes), perplexity at most {self.max_increase:.0%} above the float model's {self.float_ppl:.4g}: "
                f"<= {self.max_ppl:.4g}")


def project_target(name: str | None = None) -> Target:
    """The project for `name`, else COURSE_MODEL if it names one, else by profile: the bundled model on the small
    (CPU) profile, SmolLM2-135M on the large one."""
    from ..core.env import choose_device
    from ..core.profile import get_profile
    from ..core.results import load_result

    name = name or os.environ.get("COURSE_MODEL") or ""
    if name not in ("course-model", "smollm2-135m"):
        name = get_profile(device=choose_device()).pick(small="course-model", large="smollm2-135m")
    if name == "course-model":  # chapter 06's recording: float32, FAST protocol
        return Target(name, 8_000_000, 0.03, load_result("cpu_mixed").summary[name]["float perplexity"], "cpu_mixed")
    fast = next(r for r in load_result("cpu_smollm2_eval").rows if r["kind"] == "float" and r["protocol"] == "fast")
    return Target(name, 120_000_000, 0.20, fast["perplexity"], "cpu_smollm2_eval")


def load_compressed(path: str | Path, device: str = "cpu"):
    """A saved model, however the course saved it: a GGUF file (chapter 06), GPTQ, AWQ and compressed-tensors
    checkpoints through course_lib.gptq.tools.load_quantized, anything else (bitsandbytes, plain weights) through
    from_pretrained;
    float tensors in float32, eval mode."""
    import json

    from transformers import AutoModelForCausalLM

    from ..gptq.tools import load_quantized

    path = Path(path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:   # chapter 06's GGUF files: transformers de-quantizes them (the leaderboard scores them so)
        return AutoModelForCausalLM.from_pretrained(str(path), gguf_file=ggufs[0].name, dtype=torch.float32,
                                                    device_map=device).eval()
    if len(ggufs) > 1:
        raise ValueError(f"{len(ggufs)} GGUF files in one directory: keep the one you submit")
    if not (path / "config.json").is_file():
        raise ValueError("there is no config.json: save the model with save_pretrained (or save_gptq_checkpoint), "
                         "which writes the config beside the weights")
    method = (json.loads((path / "config.json").read_text()).get("quantization_config") or {}).get("quant_method")
    if method in ("gptq", "awq", "compressed-tensors"):
        return load_quantized(path, device=device)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, device_map=device).eval()


def _shown(path: Path) -> str:
    """The path as the learner gave it, relative to here when it is inside (stored outputs hold no absolute path)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


def _skeleton(name: str):
    """The float model's architecture on the meta device (no weights): which layers the bits per weight count."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..lm.models import model_source

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_source(name)))


def measure_project(path: str | Path, target: Target, device: str = "cpu") -> dict:
    """{"bytes", "bpw", "ppl"} of the checkpoint at `path`: its weight files and the bits per weight of its linear
    layers as the leaderboard counts them (course_lib.eval.storage), and its perplexity under the course protocol
    with the target's tokenizer. Raises ValueError with a readable reason when nothing the course can load is there."""
    from ..eval.perplexity import window_losses
    from ..eval.storage import measured, weight_files
    from ..lm.models import load_tokenizer

    try:
        files = weight_files(path)
    except FileNotFoundError:
        raise ValueError("there are no weight files (*.safetensors, *.gguf) in it") from None
    try:
        bpw = measured(path, _skeleton(target.model), "").bpw
    except Exception:  # layers renamed or removed (structured pruning), an unreadable file: the bytes still count
        bpw = None
    try:
        model = load_compressed(path, device)
    except Exception as exc:  # any library's failure: say which, in one line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"the course could not load it ({type(exc).__name__}: {first})") from None
    tok = load_tokenizer(target.model)
    if model.config.vocab_size != len(tok):
        raise ValueError(f"it is not a compressed {target.model}: its vocabulary has {model.config.vocab_size} "
                         f"entries, the tokenizer's {len(tok)}")
    return {"bytes": sum(f.stat().st_size for f in files), "bpw": bpw, "ppl": window_losses(model, tok).ppl}


def check_project(target: str | Path | Callable, *, model: str | None = None) -> bool:
    """The closing project: a compressed model that fits the budget and keeps its perplexity.

    target: the directory where you saved your compressed model, or a function compress(model, tokenizer, out_dir)
    that compresses the float model it is given (float32, a fresh copy) and saves it to out_dir (a temporary
    directory). Accepted: a GPTQ, AWQ or compressed-tensors checkpoint (chapters 03, 04, 06), one GGUF file (chapter
    06: transformers de-quantizes it, as the leaderboard does), a bitsandbytes model's
    save_pretrained (chapter 05) or a plain save_pretrained. The check measures the directory's weight files and the
    perplexity under the course protocol, prints both against the target (project_target(model)) and returns True
    when bytes <= budget and perplexity <= the threshold. It never raises: bad input prints a clear error."""
    from ..core.env import choose_device
    from ..lm.models import load_model

    goal = project_target(model)
    device = str(choose_device())
    print(f"project: {goal.describe()} (float perplexity from {goal.recorded_in}.json)")
    with tempfile.TemporaryDirectory() as tmp:
        if callable(target):
            float_model, tok = load_model(goal.model, dtype=torch.float32, device=device)
            ok, _ = _call("project", target, (float_model, tok, Path(tmp)), "calling it with (model, tokenizer, "
                                                                           "out_dir)")
            if not ok:
                return False
            path, shown = Path(tmp), "out_dir"
        elif isinstance(target, (str, os.PathLike)):
            path = Path(target)
            shown = _shown(path)
            if not path.is_dir():
                print(f"[x] project: there is no directory {shown}. Save your compressed model there first "
                      f"({FORMATS}).")
                return False
        else:
            print(f"[x] project: expected a directory (a str or Path) or a function compress(model, tokenizer, "
                  f"out_dir), got {type(target).__name__} {_short(target)}.")
            return False
        try:
            m = measure_project(path, goal, device)
        except ValueError as exc:
            print(f"[x] project: {shown}: {exc}. Save it as {FORMATS}.")
            return False
    fits, keeps = m["bytes"] <= goal.budget_bytes, m["ppl"] <= goal.max_ppl
    bpw = f", linear layers at {m['bpw']:.3g} bits per weight" if m["bpw"] is not None else ""
    print(f"  weights:    {m['bytes']:,} bytes ({m['bytes'] / 1e6:.4g} MB{bpw}): "
          f"{'within' if fits else 'OVER'} the budget of {goal.budget_bytes / 1e6:g} MB")
    print(f"  perplexity: {m['ppl']:.4g} ({m['ppl'] / goal.float_ppl - 1:+.2%} over float): "
          f"{'within' if keeps else 'ABOVE'} the threshold of {goal.max_ppl:.4g}")
    if fits and keeps:
        print(f"[ok] project: passed: {goal.model} in {m['bytes'] / 1e6:.4g} MB at perplexity {m['ppl']:.4g}.")
        return True
    why = []
    if not fits:
        why.append(f"{m['bytes'] - goal.budget_bytes:,} bytes over the budget. Hint: everything in the weight files "
                   f"counts: keep the float tensors (embeddings, norms) in 16 bits, not 32, and the linear layers "
                   f"at about 4 bits (a 4-bit GPTQ checkpoint stores 4.25-4.4 bits per weight with its scales)")
    if not keeps:
        why.append(f"the perplexity is {m['ppl'] / goal.max_ppl - 1:.1%} above the threshold. Hint: every bit "
                   f"below 4 costs more than the last (Q1); calibrate (GPTQ, AWQ), give the bits to the layers where "
                   f"the KL says they matter (chapter 06), and check that what you saved is what you measured")
    print("[x] project: " + "; ".join(why) + ".")
    return False


WARM_UPS = ("kv_crossover", "traffic_saving")
EXERCISES = {"sqnr_db": check_sqnr_db, "kv_crossover": check_kv_crossover, "traffic_saving": check_traffic_saving,
             "best_under_budget": check_best_under_budget, "token_kl": check_token_kl, "project": check_project}
