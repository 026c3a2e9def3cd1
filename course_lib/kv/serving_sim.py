"""Contiguous preallocation against paging: a step-level simulation of KV-cache memory in serving.

The argument of the vLLM paper (Kwon et al., SOSP 2023, arXiv 2309.06180, section 1 and Fig. 2):
systems that store each request's KV cache contiguously must reserve its memory at admission,
before they know how long the answer will be. Most of the reserved slots hold no token most of
the time, so fewer requests fit in the batch. Paging allocates 16-token blocks as tokens arrive.

The model of a server here: a memory budget of ``kv_slots`` token slots (one slot = K and V of
one token in every layer); time advances in *steps*, one model iteration each, in which every
running sequence produces one token. Two settings:

* offline (the default): every request waits at time 0 and a step lasts 1, so tokens per step is
  the throughput; what memory allows is measured while requests are still waiting;
* a trace: requests arrive at given times (``poisson_arrivals``, as the paper's experiments) and a
  step lasts what ``StepTime`` says (a roofline of OPT-13B on an A100: it grows with the cached tokens).

Policies (the first three are the paper's Orca baselines, section 6.1):

* ``max``     reserve ``max_len`` slots per request at admission (Orca (Max));
* ``pow2``    reserve prompt + the next power of two >= the output length, at most ``max_len``
              (Orca (Pow2): "if the true output length is 25, it reserves 32 positions for outputs");
* ``oracle``  reserve exactly prompt + output (Orca (Oracle): knows the future, infeasible);
* ``paged``   blocks of ``block_size`` slots allocated as tokens are written (vLLM).

Where a contiguous reservation goes: ``allocator="ideal"`` fits it whenever enough slots are free
anywhere (no external fragmentation: the contiguous policies look better than in the paper);
``allocator="buddy"`` places it with a binary buddy allocator (``kv.buddy``), as the paper's Orca did.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .buddy import BuddyAllocator, block_size_for
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


@dataclass(frozen=True)
class StepTime:
    """Seconds of one iteration of a memory-bound server: a roofline, the simplest stated model.

    A decode step reads every weight and every cached token's K and V from memory once; the prompts
    admitted in the step (their prefill) cost 2 x parameters FLOPs per token:

        t = (weight_bytes + cached_tokens x kv_bytes_per_token) / bandwidth + prefill_tokens x flops_per_token / flops

    The defaults are OPT-13B in fp16 on an A100-40GB, the vLLM paper's setup: 26 GB of weights
    (Table 1), 2 x 40 layers x 5120 x 2 bytes = 800 KiB of K and V per token (Table 1's 15.7k slots
    in 12 GB), 1.555 TB/s and 312 TFLOP/s (the A100-40GB's published peaks). A real server reaches
    a fraction of both peaks and adds overheads, so this is a lower bound on its step time.
    """

    weight_bytes: float = 26e9
    kv_bytes_per_token: float = 2 * 40 * 5120 * 2
    bandwidth: float = 1.555e12
    flops_per_token: float = 2 * 13e9
    flops: float = 312e12

    def __call__(self, batch: int, cached_tokens: int, prefill_tokens: int) -> float:
        memory = (self.weight_bytes + cached_tokens * self.kv_bytes_per_token) / self.bandwidth
        return memory + prefill_tokens * self.flops_per_token / self.flops


def poisson_arrivals(n: int, rate: float, *, seed: int = 0) -> list[float]:
    """Arrival times (seconds) of n requests at `rate` per second: exponential gaps, as the paper's traces
    ("we generate request arrival times using Poisson distribution with different request rates", 6.1)."""
    if not isinstance(n, int) or n < 1 or not rate > 0:
        raise ValueError(f"Need n >= 1 requests and a positive rate, got n={n!r}, rate={rate!r}.")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    return np.cumsum(gaps).tolist()


@dataclass
class SimResult:
    """What one policy did with one list of requests.

    Fractions are of the budget ``kv_slots`` and sum to 1 (token_state_fraction + reserved_fraction
    + internal_fragmentation + allocator_fraction + free_fraction), the analogue of one bar of the
    paper's Fig. 2:
    token states   slots holding a token's K and V;
    reserved       slots held for tokens the request will still produce;
    internal frag. slots reserved beyond the request's final length, never used;
    allocator      slots of a buddy block beyond the reservation (its rounding up to a power of two);
    free           slots held by nobody (too few, or too scattered, for the next request).
    They, ``mean_batch`` and ``utilization`` (stored / held) are averages over the *measured* steps,
    weighted by each step's duration. Offline (every request waiting at time 0) those are the
    saturated steps, with requests still waiting after admission, where memory is what limits the
    batch (the drain at the end only measures the longest request; if every request fitted at once,
    the first step alone is measured). With arrivals, the steps that start before the last request
    arrives: the trace, without the drain.
    """

    policy: str
    steps: int
    saturated_steps: int
    measured_steps: int
    mean_batch: float
    token_state_fraction: float
    reserved_fraction: float
    internal_fragmentation: float
    allocator_fraction: float
    free_fraction: float
    utilization: float
    preemptions: int
    recomputed_tokens: int  # prompt + generated tokens re-prefilled after a preemption
    tokens_generated: int
    duration: float  # seconds with a step-time model, else steps
    throughput: float  # tokens_generated / duration, over the whole run
    normalized_latency: float  # mean over requests of (finish - arrival) / output tokens (the paper's Fig. 12)
    peak_slots: int  # most slots held at once; never more than kv_slots
    kv_slots: int
    history: dict[str, np.ndarray] = field(repr=False, compare=False)  # per step: batch, stored, held, dt


class _Seq:
    """A request while it is in the system."""

    __slots__ = ("prompt", "output", "arrival", "finish", "generated", "stored", "held", "reserved", "addr")

    def __init__(self, req: Request, arrival: float = 0.0) -> None:
        self.prompt, self.output, self.arrival, self.finish = req.prompt, req.output, arrival, arrival
        self.generated = self.stored = self.held = self.reserved = 0
        self.addr: int | None = None  # the buddy block's address


def _reservation(policy: str, seq: _Seq, max_len: int) -> int:
    """Slots a contiguous policy reserves at admission."""
    if policy == "max":
        return max_len
    if policy == "pow2":
        return min(max_len, seq.prompt + (1 << (seq.output - 1).bit_length()))  # next power of two >= output
    return seq.prompt + seq.output  # oracle


def _check(requests, policy, kv_slots, block_size, max_len, watermark, allocator, arrivals) -> None:
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
    if allocator not in ("ideal", "buddy") or (allocator == "buddy" and policy == "paged"):
        raise ValueError(f"allocator must be 'ideal' or, for the contiguous policies, 'buddy'; got {allocator!r} "
                         f"with {policy!r} (paging allocates fixed blocks from a free list).")
    if arrivals is not None and (len(arrivals) != len(requests) or any(b < a for a, b in zip(arrivals, arrivals[1:]))):
        raise ValueError("arrivals must give one non-decreasing time per request (e.g. poisson_arrivals(len(requests), "
                         "rate)); requests are served first come, first served.")


def simulate(
    requests: list[Request],
    policy: str,
    *,
    kv_slots: int,
    block_size: int = 16,
    max_len: int = 2048,
    watermark: float = 0.01,
    allocator: str = "ideal",
    arrivals: list[float] | None = None,
    step_time: StepTime | None = None,
) -> SimResult:
    """Serve `requests` first come first served, iteration by iteration.

    arrivals: each request's arrival time in seconds (``poisson_arrivals``); None: all waiting at
    time 0 (an offline batch). step_time: seconds per iteration from (batch, cached tokens, prefill
    tokens), e.g. ``StepTime()``; None: every step lasts 1 (time counted in steps).
    allocator: how a contiguous reservation finds memory: "ideal" (it fits whenever enough slots
    are free anywhere) or "buddy" (a power-of-two block from ``BuddyAllocator``, as the paper's Orca).

    Each step: (1) admit arrived requests in order while they fit: a contiguous policy needs its
    whole reservation; ``paged`` needs the blocks of its prompt plus one token, keeping
    ``watermark`` of the blocks free (vLLM's default is 1 %). A newly admitted request stores its
    prompt (prefill) and produces its first token in the same step. (2) Every running sequence
    produces one token and stores it. ``paged``: a sequence whose last block is full takes a new
    block; if none is free, the most recently admitted running sequence is preempted (vLLM
    section 4.5: latest preempted first, all its blocks freed, *recompute*: it goes back to the
    front of the queue and on re-admission its prompt and the tokens it already generated are
    prefilled together). (3) Finished sequences free their memory.
    """
    _check(requests, policy, kv_slots, block_size, max_len, watermark, allocator, arrivals)
    paged = policy == "paged"
    capacity = (kv_slots // block_size) * block_size if paged else kv_slots
    keep_free = int(watermark * capacity / block_size) * block_size if paged else 0
    buddy = BuddyAllocator(kv_slots, block_size_for(max_len)) if allocator == "buddy" else None
    times = arrivals if arrivals is not None else [0.0] * len(requests)
    pending = deque(_Seq(r, t) for r, t in zip(requests, times))  # not arrived yet
    last_arrival = times[-1] if times else 0.0
    waiting: deque[_Seq] = deque()
    running: list[_Seq] = []
    finished: list[_Seq] = []
    held_total, now = 0, 0.0
    preemptions = recomputed = tokens = 0
    history: dict[str, list] = {k: [] for k in ("batch", "stored", "held", "reserved", "internal", "rounding", "dt")}
    saturated: list[bool] = []
    measured: list[bool] = []

    while pending or waiting or running:
        while pending and pending[0].arrival <= now:
            waiting.append(pending.popleft())
        if not waiting and not running:  # idle until the next request arrives
            now = pending[0].arrival
            continue
        # (1) Admission, in order; the first request that does not fit blocks the rest.
        prefill = 0
        while waiting:
            seq = waiting[0]
            context = seq.prompt + seq.generated  # > prompt only after a preemption
            if paged:
                need = blocks_needed(context + 1, block_size) * block_size
                fits = held_total + need <= capacity - (keep_free if running else 0)
                grant = reserve = blocks_needed(context, block_size) * block_size
            else:
                reserve = _reservation(policy, seq, max_len)
                if buddy is None:
                    grant, fits = reserve, held_total + reserve <= capacity
                else:
                    seq.addr = buddy.allocate(reserve)
                    grant, fits = block_size_for(reserve), seq.addr is not None
            if not fits:
                break
            waiting.popleft()
            recomputed += context if seq.generated else 0
            prefill += context
            seq.held, seq.reserved, seq.stored = grant, reserve, context
            held_total += grant
            running.append(seq)
        saturated.append(bool(waiting))
        measured.append(now <= last_arrival if arrivals is not None else bool(waiting))

        # (2) One token for every running sequence, oldest first.
        tokens_before, i = tokens, 0
        while i < len(running):
            seq = running[i]
            if paged and seq.stored == seq.held:  # last block full: take a new one
                victim = None
                while held_total + block_size > capacity and victim is not seq:
                    victim = running.pop()  # the most recently admitted; its blocks all go
                    held_total -= victim.held
                    victim.held = victim.reserved = victim.stored = 0
                    waiting.appendleft(victim)  # so the queue stays in arrival order
                    preemptions += 1
                if victim is seq:  # it was the newest itself: it waits for the next admission
                    break
                seq.held += block_size
                seq.reserved += block_size
                held_total += block_size
            seq.generated += 1
            seq.stored += 1
            tokens += 1
            i += 1

        assert held_total <= capacity <= kv_slots, "memory in use exceeds the budget"
        if tokens == tokens_before:  # cannot happen while one max_len request fits: a bug
            raise RuntimeError(f"Step {len(saturated)} produced no token; the simulation is stuck.")
        stored_now = sum(s.stored for s in running)
        dt = step_time(len(running), stored_now, prefill) if step_time else 1.0
        now += dt
        history["batch"].append(len(running))
        history["stored"].append(stored_now)
        history["held"].append(held_total)
        finals = [(s.reserved, s.stored, s.prompt + s.output) for s in running]
        history["reserved"].append(sum(min(r, f) - st for r, st, f in finals))
        history["internal"].append(sum(max(0, r - f) for r, _, f in finals))
        history["rounding"].append(sum(s.held - s.reserved for s in running))
        history["dt"].append(dt)

        # (3) Finished sequences free their memory.
        for s in running:
            if s.generated == s.output:
                held_total -= s.held
                s.finish = now
                finished.append(s)
                if buddy is not None:
                    buddy.free(s.addr)
        running = [s for s in running if s.generated < s.output]

    return _result(policy, history, saturated, measured, kv_slots, finished, preemptions, recomputed, tokens, now)


def _result(policy, history, saturated, measured, kv_slots, finished, preemptions, recomputed, tokens, now):
    hist = {k: np.asarray(v, dtype=np.float64 if k == "dt" else np.int64) for k, v in history.items()}
    mask = np.asarray(measured, dtype=bool)
    if not mask.any():  # every request fitted at once: memory never limited the batch
        mask[0] = True
    weight = hist["dt"][mask] / hist["dt"][mask].sum()

    def mean(x: np.ndarray) -> float:
        return float((x[mask] * weight).sum())

    stored, held = hist["stored"].astype(float), hist["held"].astype(float)
    return SimResult(
        policy=policy,
        steps=len(saturated),
        saturated_steps=int(sum(saturated)),
        measured_steps=int(mask.sum()),
        mean_batch=mean(hist["batch"].astype(float)),
        token_state_fraction=mean(stored / kv_slots),
        reserved_fraction=mean(hist["reserved"] / kv_slots),
        internal_fragmentation=mean(hist["internal"] / kv_slots),
        allocator_fraction=mean(hist["rounding"] / kv_slots),
        free_fraction=mean((kv_slots - held) / kv_slots),
        utilization=mean(stored / np.maximum(held, 1)),
        preemptions=preemptions,
        recomputed_tokens=recomputed,
        tokens_generated=tokens,
        duration=now,
        throughput=tokens / max(now, 1e-12),
        normalized_latency=float(np.mean([(s.finish - s.arrival) / s.output for s in finished])),
        peak_slots=int(hist["held"].max(initial=0)),
        kv_slots=kv_slots,
        history={k: hist[k] for k in ("batch", "stored", "held", "dt")},
    )


def simulate_policies(requests: list[Request], *, kv_slots: int, allocator: str = "ideal",
                      **kw) -> dict[str, SimResult]:
    """simulate() for every policy of POLICIES; `allocator` applies to the contiguous (Orca) ones, and
    the other keywords (block_size, max_len, arrivals, step_time ...) to all."""
    return {p: simulate(requests, p, kv_slots=kv_slots, allocator="ideal" if p == "paged" else allocator, **kw)
            for p in POLICIES}


def compare(requests: list[Request], *, kv_slots: int, workload: str = "sharegpt",
            results: dict[str, SimResult] | None = None, **kw) -> list[dict]:
    """One row per policy, for course_lib.print_table, beside the paper's numbers: the token-state
    share and the other waste of Fig. 2 (its "external fragmentation & others": here the allocator's
    rounding plus free slots), and the mean batch of Fig. 13 for `workload`.

    results: what simulate_policies returned (to reuse it); else it runs with `kw`.
    """
    paper = paper_numbers()
    fig2, fig13 = paper["kv_cache_usage_fig2"], paper["mean_batched_requests_fig13"]
    key = {"max": "orca_max", "pow2": "orca_pow2", "oracle": "orca_oracle", "paged": "vllm"}
    results = results or simulate_policies(requests, kv_slots=kv_slots, **kw)
    base = results["max"].throughput
    rows = []
    for p, r in results.items():
        rows.append({"policy": LABELS[p], "mean_batch": r.mean_batch,
                     "paper_batch": fig13[workload][fig13["order"].index(key[p])],
                     "token_states": r.token_state_fraction, "paper_token_states": fig2[key[p]][0] / 100,
                     "reserved": r.reserved_fraction, "internal_frag": r.internal_fragmentation,
                     "other": r.allocator_fraction + r.free_fraction, "paper_other": (fig2[key[p]][3] or 0) / 100,
                     "utilization": r.utilization, "preemptions": r.preemptions, "steps": r.steps,
                     "speedup_vs_max": r.throughput / base, "s_per_token": r.normalized_latency})
    return rows
