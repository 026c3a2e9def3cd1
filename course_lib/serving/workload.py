"""A seeded serving workload, the three ways to serve it, and the numbers a serving paper reports.

The workload: n requests with Poisson arrivals (exponential gaps at ``rate`` requests per second;
``rate=None`` puts every request at time 0, the offline setting), lognormal prompt and output lengths
(long right tails, like chat traffic), prompts cut from the course's validation text, and optionally
one shared system prompt in front of every request (the case prefix caching is for). Every request
generates exactly its output length (``ignore_eos``), as in vLLM's own benchmark, so that every
server does the same work.

Served by:

* ``serve_sequential``: transformers' ``generate``, one request at a time (the seed's "HuggingFace");
* ``serve_static``: transformers' ``generate`` on padded batches of up to ``batch_size`` waiting
  requests; a batch runs until its longest member is done, and nobody joins it meanwhile;
* ``serve_engine``: the course engine, requests added as they arrive, one ``step`` per iteration.

Each returns a ``ServeRun``: per request its arrival, first-token and finish times, and the summary
metrics (throughput in output tokens per second, time to first token, time per output token, p50/p99).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .engine import Engine
from .sampling import SamplingParams


@dataclass(frozen=True)
class WorkItem:
    prompt_ids: tuple[int, ...]
    output_len: int
    arrival: float  # seconds after the start


@dataclass(frozen=True)
class Workload:
    items: tuple[WorkItem, ...]
    description: str

    @property
    def prompt_tokens(self) -> int:
        return sum(len(w.prompt_ids) for w in self.items)

    @property
    def output_tokens(self) -> int:
        return sum(w.output_len for w in self.items)

    def offline(self) -> Workload:
        """The same requests, all arriving at time 0."""
        return Workload(tuple(WorkItem(w.prompt_ids, w.output_len, 0.0) for w in self.items),
                        self.description + ", all at t=0")


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, n: int, lo: int, hi: int) -> np.ndarray:
    """Lognormal lengths with the given mean (mu = ln(mean) - sigma²/2), rounded and clipped to [lo, hi]."""
    x = rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, n)
    return np.clip(np.rint(x), lo, hi).astype(int)


def make_workload(tokenizer, n: int, *, prompt_mean: float = 48, output_mean: float = 48, sigma: float = 0.6,
                  max_prompt: int = 256, max_output: int = 256, rate: float | None = None, shared_prefix: int = 0,
                  seed: int = 0, stream: torch.Tensor | None = None, max_len: int | None = None) -> Workload:
    """n requests; see the module docstring. ``shared_prefix`` tokens of one system prompt lead every prompt.

    max_len: the model's context; a request's prompt and output are cut to fit in it (the output first).
    """
    if n < 1:
        raise ValueError(f"A workload needs at least one request, got n={n}.")
    rng = np.random.default_rng(seed)
    if stream is None:
        from ..lm.tokens import token_stream

        stream = token_stream("validation", tokenizer)
    stream = stream.tolist() if isinstance(stream, torch.Tensor) else list(stream)
    prompts = _lognormal(rng, prompt_mean, sigma, n, 1, max_prompt)
    outputs = _lognormal(rng, output_mean, sigma, n, 1, max_output)
    gaps = rng.exponential(1.0 / rate, n) if rate else np.zeros(n)
    arrivals = np.cumsum(gaps) - gaps[0]  # the first request arrives at 0
    prefix = stream[:shared_prefix]
    items = []
    for p, o, t in zip(prompts, outputs, arrivals):
        if max_len is not None:
            if shared_prefix + 2 > max_len:
                raise ValueError(f"shared_prefix={shared_prefix} leaves no room in a context of {max_len} tokens.")
            p = min(int(p), max_len - shared_prefix - 1)
            o = max(1, min(int(o), max_len - shared_prefix - p))
        start = int(rng.integers(shared_prefix, len(stream) - int(p)))
        items.append(WorkItem(tuple(prefix + stream[start:start + int(p)]), int(o), float(t)))
    what = (f"{n} requests, prompts ~{prompt_mean:g} tokens (+{shared_prefix} shared), outputs ~{output_mean:g}, "
            + (f"Poisson {rate:g} req/s" if rate else "offline"))
    return Workload(tuple(items), what)


# ---------------------------------------------------------------------------------------------- results
@dataclass
class RequestTiming:
    arrival: float
    first_token: float
    finish: float
    output_len: int
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float:
        """Time per output token after the first (0 for a one-token answer)."""
        return (self.finish - self.first_token) / (self.output_len - 1) if self.output_len > 1 else 0.0

    @property
    def latency(self) -> float:
        return self.finish - self.arrival


@dataclass
class ServeRun:
    name: str
    timings: list[RequestTiming]
    seconds: float                      # first arrival to last finish
    forward_passes: int                 # model iterations
    extra: dict = field(default_factory=dict)

    @property
    def output_tokens(self) -> int:
        return sum(t.output_len for t in self.timings)

    def summary(self) -> dict:
        """Throughput and the latency percentiles (milliseconds)."""
        def pct(values, q):
            return float(np.percentile(values, q)) * 1e3

        ttft = [t.ttft for t in self.timings]
        tpot = [t.tpot for t in self.timings if t.output_len > 1]
        lat = [t.latency for t in self.timings]
        return {"server": self.name, "tokens/s": self.output_tokens / self.seconds, "seconds": self.seconds,
                "passes": self.forward_passes,
                "TTFT p50 ms": pct(ttft, 50), "TTFT p99 ms": pct(ttft, 99),
                "TPOT p50 ms": pct(tpot, 50) if tpot else 0.0, "TPOT p99 ms": pct(tpot, 99) if tpot else 0.0,
                "latency p50 ms": pct(lat, 50), "latency p99 ms": pct(lat, 99), **self.extra}


def _sync(device) -> None:
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Seconds since the run started; waits for an arrival by sleeping."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def wait_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)


class _StepTimes:
    """A transformers streamer that notes the time of every generated step (the first put is the prompt)."""

    def __init__(self, clock: _Clock, device) -> None:
        self.clock, self.device, self.times, self._prompt_seen = clock, device, [], False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        _sync(self.device)
        self.times.append(self.clock.now())

    def end(self) -> None:
        pass


@torch.inference_mode()
def _hf_generate(model, batch: list[WorkItem], pad_id: int, clock: _Clock) -> list[float]:
    """Greedy generate for a left-padded batch, exactly max(output_len) new tokens; the step times."""
    device = next(model.parameters()).device
    width = max(len(w.prompt_ids) for w in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, w in enumerate(batch):
        ids[i, width - len(w.prompt_ids):] = torch.tensor(w.prompt_ids)
        mask[i, width - len(w.prompt_ids):] = 1
    steps = max(w.output_len for w in batch)
    streamer = _StepTimes(clock, device)
    model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=steps,
                   min_new_tokens=steps, do_sample=False, pad_token_id=pad_id, streamer=streamer)
    return streamer.times


def serve_sequential(model, workload: Workload, *, pad_id: int = 0) -> ServeRun:
    """One request at a time with transformers' generate, in arrival order."""
    clock, timings, passes = _Clock(), [], 0
    for w in workload.items:
        clock.wait_until(w.arrival)
        times = _hf_generate(model, [w], pad_id, clock)
        passes += len(times)
        timings.append(RequestTiming(w.arrival, times[0], times[w.output_len - 1], w.output_len, times))
    return ServeRun("HF generate, one at a time", timings, clock.now(), passes)


def serve_static(model, workload: Workload, batch_size: int, *, pad_id: int = 0) -> ServeRun:
    """Static batching: take up to batch_size requests that have arrived, run them to the longest, repeat.

    A request's answer is returned when its batch ends (the whole batch comes back from one generate call).
    """
    clock, timings, passes, i = _Clock(), [], 0, 0
    items, wasted = list(workload.items), 0
    while i < len(items):
        clock.wait_until(items[i].arrival)
        now = clock.now()
        j = i + 1
        while j < len(items) and j - i < batch_size and items[j].arrival <= now:
            j += 1
        batch = items[i:j]
        times = _hf_generate(model, batch, pad_id, clock)
        passes += len(times)
        end = times[-1]
        for w in batch:
            timings.append(RequestTiming(w.arrival, times[0], end, w.output_len, times[:w.output_len]))
            wasted += len(times) - w.output_len
        i = j
    return ServeRun(f"HF generate, static batches of {batch_size}", timings, clock.now(), passes,
                    {"wasted row-steps": wasted})


def serve_engine(engine: Engine, workload: Workload, *, name: str = "course engine") -> ServeRun:
    """Add each request when it arrives and step the engine while it has work."""
    device = engine.runner.device
    clock, pending, ids = _Clock(), list(workload.items), []
    by_id: dict[str, WorkItem] = {}
    steps0, stats0 = engine.step_count, dict(engine.stats)
    while pending or engine.has_unfinished():
        while pending and pending[0].arrival <= clock.now():
            w = pending.pop(0)
            rid = engine.add_request(list(w.prompt_ids), SamplingParams(max_tokens=w.output_len, ignore_eos=True),
                                     arrival=clock.t0 + w.arrival)
            ids.append(rid)
            by_id[rid] = w
        if engine.has_unfinished():
            engine.step()
            _sync(device)
        elif pending:
            clock.wait_until(pending[0].arrival)
    timings = []
    for rid in ids:
        r, w = engine.requests[rid], by_id[rid]
        times = [t - clock.t0 for t in r.token_times]
        timings.append(RequestTiming(w.arrival, times[0], times[-1], len(r.output_ids), times))
        engine.release(rid)
    extra = {k: engine.stats[k] - stats0.get(k, 0) for k in ("cached_tokens", "preemptions")}
    extra["max batch"] = engine.stats["max_running"]
    return ServeRun(name, timings, clock.now(), engine.step_count - steps0, extra)
