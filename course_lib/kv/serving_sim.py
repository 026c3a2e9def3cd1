"""Contiguous preallocation against paging: a step-level simulation of KV-cache memory in serving.

The argument of the vLLM paper (Kwon et al., SOSP 2023, arXiv 2309.06180, section 1 and Fig. 2):
systems that store each request's KV cache contiguously must reserve its memory at admission,
before they know how long the answer will be. Most of the reserved slots hold no token most of
the time, so fewer requests fit in the batch. Paging allocates 16-token blocks as tokens arrive.

The model of a server here: a memory budget of ``kv_slots`` token slots (one slot = K and V of
one token in every layer); time advances in *steps*, one model iteration each; every running
sequence produces one token per step. A step costs the same whatever the batch (decoding is
memory-bound), so tokens per step is the throughput.

Policies (the first three are the paper's Orca baselines, section 6.1):

* ``max``     reserve ``max_len`` slots per request at admission (Orca (Max));
* ``pow2``    reserve prompt + the next power of two >= the output length, at most ``max_len``
              (Orca (Pow2): "if the true output length is 25, it reserves 32 positions for outputs");
* ``oracle``  reserve exactly prompt + output (Orca (Oracle): knows the future, infeasible);
* ``paged``   blocks of ``block_size`` slots allocated as tokens are written (vLLM).

Not modelled: the buddy allocator the paper assumes for Orca. Our contiguous allocator is ideal
(a reservation fits whenever enough slots are free), so there is no external fragmentation and
the contiguous policies look *better* here than in the paper's Fig. 2.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .paged import blocks_needed

POLICIES = ("max", "pow2", "oracle", "paged")
LABELS = {"max": "Orca (Max)", "pow2": "Orca (Pow2)", "oracle": "Orca (Oracle)", "paged": "vLLM (paged)"}
PAPER_FILE = Path(__file__).resolve().parents[2] / "data" / "kv" / "vllm_paper.json"

# Lognormal shape of the lengths: our choice, NOT from the paper (it gives only the means, Fig. 11,
# and says ShareGPT has "higher variance"). sigma = 1 gives a long right tail (std 1.3x the mean).
SIGMA = {"sharegpt": 1.0, "alpaca": 0.8}


@lru_cache(maxsize=1)
def paper_numbers() -> dict:
    """The vLLM paper's numbers (data/kv/vllm_paper.json), each with its source in the paper."""
    return json.loads(PAPER_FILE.read_text())


@dataclass(frozen=True)
class Request:
    """One request: prompt and output lengths in tokens."""

    prompt: int
    output: int

    def __post_init__(self) -> None:
        if self.prompt < 1 or self.output < 1:
            raise ValueError(f"Request lengths must be >= 1 token, got prompt={self.prompt}, output={self.output}.")


def sample_requests(n: int, workload: str = "sharegpt", *, seed: int = 0, max_len: int = 2048) -> list[Request]:
    """n requests with lognormal prompt and output lengths whose means are the paper's (Fig. 11).

    A lognormal with mean m has mu = ln(m) - sigma²/2 (sigma: ``SIGMA``, our choice). Lengths
    are rounded, at least 1, and clipped so that prompt + output <= max_len (the prompt first,
    then the output); m is raised so that the clipped means stay the paper's (impossible when
    max_len is below the mean: then the means come out lower).
    """
    datasets = paper_numbers()["datasets"]
    if workload not in SIGMA:
        raise ValueError(f"Unknown workload {workload!r}; choose one of {sorted(SIGMA)}.")
    if not isinstance(n, int) or n < 1 or not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"Need an int n >= 1 and max_len >= 2, got n={n!r}, max_len={max_len!r}.")
    rng = np.random.default_rng(seed)
    sigma = SIGMA[workload]

    def draw(mean: float) -> np.ndarray:
        return np.maximum(1, np.rint(rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, size=n))).astype(np.int64)

    mean_in, mean_out = datasets[workload]["input_mean"], datasets[workload]["output_mean"]
    # Clipping cuts the tail and lowers the mean (ShareGPT outputs by ~4 %), so draw from a
    # lognormal whose *clipped* mean is the paper's, the output's cap taken as max_len - mean_in.
    prompt = np.minimum(draw(_unclipped_mean(mean_in, sigma, max_len - 1)), max_len - 1)
    output = np.minimum(draw(_unclipped_mean(mean_out, sigma, max_len - mean_in)), max_len - prompt)
    return [Request(int(p), int(o)) for p, o in zip(prompt, output)]


def _unclipped_mean(target: float, sigma: float, cap: float) -> float:
    """The mean m of a lognormal X with E[min(X, cap)] = target, by bisection on log m.

    With mu = ln m - sigma²/2 and Phi the normal CDF:
    E[min(X, c)] = m · Phi((ln c - mu - sigma²) / sigma) + c · (1 - Phi((ln c - mu) / sigma)).
    """
    if target >= cap:  # no lognormal clipped at cap has this mean: leave it uncorrected
        return target

    def phi(z: float) -> float:
        return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))

    def clipped(log_m: float) -> float:
        mu = log_m - sigma**2 / 2
        z = (math.log(cap) - mu) / sigma
        return math.exp(log_m) * phi(z - sigma) + cap * (1.0 - phi(z))

    lo, hi = math.log(target), math.log(target) + 10.0  # clipped() grows with m, from below target
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if clipped(mid) < target else (lo, mid)
    return math.exp(lo)


@dataclass
class SimResult:
    """What one policy did with one list of requests.

    Fractions are of the budget ``kv_slots`` and sum to 1 (token_state_fraction + reserved_fraction
    + internal_fragmentation + free_fraction), the analogue of one bar of the paper's Fig. 2:
    token states   slots holding a token's K and V;
    reserved       slots held for tokens the request will still produce;
    internal frag. slots held beyond the request's final length, never used;
    free           slots held by nobody (what is left over, too little for the next request).
    They and ``mean_batch`` and ``utilization`` (stored / held) are means over the *saturated*
    steps, those with requests still waiting after admission, where memory is what limits the
    batch (the drain at the end, queue empty, only measures the longest request). If every
    request fitted at step 0, that first step alone is measured.
    """

    policy: str
    steps: int
    saturated_steps: int
    mean_batch: float
    token_state_fraction: float
    reserved_fraction: float
    internal_fragmentation: float
    free_fraction: float
    utilization: float
    preemptions: int
    recomputed_tokens: int  # prompt + generated tokens re-prefilled after a preemption
    tokens_generated: int
    throughput: float  # tokens_generated / steps, over the whole run
    peak_slots: int  # most slots held at once; never more than kv_slots
    kv_slots: int
    history: dict[str, np.ndarray] = field(repr=False, compare=False)  # per step: batch, stored, held


class _Seq:
    """A request while it is in the system."""

    __slots__ = ("prompt", "output", "generated", "stored", "held")

    def __init__(self, req: Request) -> None:
        self.prompt, self.output = req.prompt, req.output
        self.generated = self.stored = self.held = 0


def _reservation(policy: str, seq: _Seq, max_len: int) -> int:
    """Slots a contiguous policy reserves at admission."""
    if policy == "max":
        return max_len
    if policy == "pow2":
        return min(max_len, seq.prompt + (1 << (seq.output - 1).bit_length()))  # next power of two >= output
    return seq.prompt + seq.output  # oracle


def simulate(
    requests: list[Request],
    policy: str,
    *,
    kv_slots: int,
    block_size: int = 16,
    max_len: int = 2048,
    watermark: float = 0.01,
) -> SimResult:
    """Serve an offline batch (all requests waiting at step 0, first come first served).

    Each step: (1) admit waiting requests in order while they fit: a contiguous policy needs its
    whole reservation free; ``paged`` needs the blocks of its prompt plus one token, keeping
    ``watermark`` of the blocks free (vLLM's default is 1 %). A newly admitted request stores its
    prompt (prefill) and produces its first token in the same step. (2) Every running sequence
    produces one token and stores it. ``paged``: a sequence whose last block is full takes a new
    block; if none is free, the most recently admitted running sequence is preempted (vLLM
    section 4.5: latest preempted first, all its blocks freed, *recompute*: it goes back to the
    front of the queue and on re-admission its prompt and the tokens it already generated are
    prefilled together). (3) Finished sequences free their memory.
    """
    if policy not in POLICIES:
        raise ValueError(f"Unknown policy {policy!r}; choose one of {POLICIES}.")
    blocks_needed(0, block_size)  # validates block_size
    if not 0.0 <= watermark < 1.0:
        raise ValueError(f"watermark is a fraction of the blocks in [0, 1), got {watermark!r}.")
    if not isinstance(kv_slots, int) or kv_slots < blocks_needed(max_len, block_size) * block_size:
        raise ValueError(
            f"kv_slots={kv_slots!r} cannot hold even one request of max_len={max_len} tokens "
            f"({blocks_needed(max_len, block_size) * block_size} slots in blocks of {block_size}); "
            "give the cache more slots or lower max_len."
        )
    too_long = [r for r in requests if r.prompt + r.output > max_len]
    if too_long:
        raise ValueError(f"{len(too_long)} request(s) exceed max_len={max_len}, e.g. {too_long[0]}; clip them first.")

    paged = policy == "paged"
    capacity = (kv_slots // block_size) * block_size if paged else kv_slots
    keep_free = int(watermark * capacity / block_size) * block_size if paged else 0
    waiting = deque(_Seq(r) for r in requests)
    running: list[_Seq] = []
    held_total = 0
    preemptions = recomputed = tokens = 0
    history: dict[str, list[int]] = {"batch": [], "stored": [], "held": [], "reserved": [], "internal": []}
    saturated: list[bool] = []

    while waiting or running:
        # (1) Admission, in order; the first request that does not fit blocks the rest.
        while waiting:
            seq = waiting[0]
            context = seq.prompt + seq.generated  # > prompt only after a preemption
            if paged:
                need = blocks_needed(context + 1, block_size) * block_size
                fits = held_total + need <= capacity - (keep_free if running else 0)
                grant = blocks_needed(context, block_size) * block_size
            else:
                need = grant = _reservation(policy, seq, max_len)
                fits = held_total + need <= capacity
            if not fits:
                break
            waiting.popleft()
            recomputed += context if seq.generated else 0
            seq.held, seq.stored = grant, context
            held_total += grant
            running.append(seq)
        saturated.append(bool(waiting))

        # (2) One token for every running sequence, oldest first.
        tokens_before, i = tokens, 0
        while i < len(running):
            seq = running[i]
            if paged and seq.stored == seq.held:  # last block full: take a new one
                victim = None
                while held_total + block_size > capacity and victim is not seq:
                    victim = running.pop()  # the most recently admitted; its blocks all go
                    held_total -= victim.held
                    victim.held = victim.stored = 0
                    waiting.appendleft(victim)  # so the queue stays in arrival order
                    preemptions += 1
                if victim is seq:  # it was the newest itself: it waits for the next admission
                    break
                seq.held += block_size
                held_total += block_size
            seq.generated += 1
            seq.stored += 1
            tokens += 1
            i += 1

        assert held_total <= capacity <= kv_slots, "memory in use exceeds the budget"
        if tokens == tokens_before:  # cannot happen while one max_len request fits: a bug
            raise RuntimeError(f"Step {len(saturated)} produced no token; the simulation is stuck.")
        history["batch"].append(len(running))
        history["stored"].append(sum(s.stored for s in running))
        history["held"].append(held_total)
        finals = [(s.held, s.stored, s.prompt + s.output) for s in running]
        history["reserved"].append(sum(min(h, f) - st for h, st, f in finals))
        history["internal"].append(sum(max(0, h - f) for h, _, f in finals))

        # (3) Finished sequences free their memory.
        done = [s for s in running if s.generated == s.output]
        held_total -= sum(s.held for s in done)
        running = [s for s in running if s.generated < s.output]

    hist = {k: np.asarray(v, dtype=np.int64) for k, v in history.items()}
    mask = np.asarray(saturated, dtype=bool)
    if not mask.any():  # every request fitted at once: memory never limited the batch
        mask[0] = True

    def mean(x: np.ndarray) -> float:
        return float(x[mask].mean())

    stored, held = hist["stored"].astype(float), hist["held"].astype(float)
    return SimResult(
        policy=policy,
        steps=len(saturated),
        saturated_steps=int(sum(saturated)),
        mean_batch=mean(hist["batch"].astype(float)),
        token_state_fraction=mean(stored / kv_slots),
        reserved_fraction=mean(hist["reserved"] / kv_slots),
        internal_fragmentation=mean(hist["internal"] / kv_slots),
        free_fraction=mean((kv_slots - held) / kv_slots),
        utilization=mean(stored / np.maximum(held, 1)),
        preemptions=preemptions,
        recomputed_tokens=recomputed,
        tokens_generated=tokens,
        throughput=tokens / max(len(saturated), 1),
        peak_slots=int(hist["held"].max(initial=0)),
        kv_slots=kv_slots,
        history={k: hist[k] for k in ("batch", "stored", "held")},
    )


def compare(requests: list[Request], *, kv_slots: int, block_size: int = 16, max_len: int = 2048) -> list[dict]:
    """One row per policy, for course_lib.print_table, with the paper's token-state share (Fig. 2)."""
    paper = paper_numbers()["kv_cache_usage_fig2"]
    paper_key = {"max": "orca_max", "pow2": "orca_pow2", "oracle": "orca_oracle", "paged": "vllm"}
    results = {p: simulate(requests, p, kv_slots=kv_slots, block_size=block_size, max_len=max_len) for p in POLICIES}
    base = results["max"].throughput
    return [
        {
            "policy": LABELS[p],
            "mean_batch": r.mean_batch,
            "token_states": r.token_state_fraction,
            "reserved": r.reserved_fraction,
            "internal_frag": r.internal_fragmentation,
            "free": r.free_fraction,
            "utilization": r.utilization,
            "preemptions": r.preemptions,
            "steps": r.steps,
            "speedup_vs_max": r.throughput / base,
            "paper_token_states": paper[paper_key[p]][0] / 100,
        }
        for p, r in results.items()
    ]
