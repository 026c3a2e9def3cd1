"""A small serving engine: iteration-level continuous batching over a paged KV cache.

    engine = Engine(model, tokenizer, EngineConfig(num_blocks=256))
    rid = engine.add_request(prompt_ids, SamplingParams(max_tokens=32))
    while engine.has_unfinished():
        for out in engine.step():         # one model iteration for every scheduled request
            print(out.request_id, out.text)

The ideas, each from a paper or a real engine:

* **Iteration-level scheduling** (Orca, OSDI 2022): the batch is re-formed at every step; a request
  that finishes leaves at once and a waiting one joins, instead of a batch running until its longest
  member is done (static batching).
* **Paged KV cache** (vLLM, SOSP 2023): blocks are allocated as tokens arrive (``BlockPool``); the
  runner's attention reads the blocks through block tables (``runner``).
* **Prefix caching** (vLLM's automatic prefix caching): full blocks are found by the hash of their
  tokens and everything before them, and shared with reference counts (``blocks``).
* **Chunked prefill** (Sarathi; vLLM V1's scheduler): each step has a token budget; decodes come
  first, and a long prompt is prefilled in chunks that fill what is left.
* **Preemption by recomputation** (vLLM): when a running request needs a block and none is free,
  the most recently admitted request gives up its blocks and waits; later it prefills its prompt
  and what it had generated, and goes on.

Every request keeps ``num_computed``: how many of its tokens (prompt, then output) have keys and
values in the cache. A step computes tokens ``num_computed .. num_computed + n - 1``; when that
reaches the end of the known tokens the request samples one more.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from .blocks import BlockPool, blocks_needed, prefix_hashes, block_hash, ROOT
from .runner import ModelRunner, PagedKVPool, StepBatch, KV_DTYPES
from .sampling import RequestError, SamplingParams, sample

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass(frozen=True)
class EngineConfig:
    """The engine's budgets. ``kv_cache_bytes`` (if set) sizes the pool instead of ``num_blocks``."""

    num_blocks: int = 512
    block_size: int = 16
    max_num_seqs: int = 32              # requests in one batch
    max_num_batched_tokens: int = 256    # new tokens in one step (the chunked-prefill budget)
    enable_prefix_caching: bool = True
    kv_dtype: str = "auto"               # auto (the model's), float32, bfloat16, float16, fp8
    kv_scale: float = 1.0                # FP8 only: stored = x / scale
    kv_cache_bytes: int | None = None
    max_model_len: int | None = None     # default: the model's max_position_embeddings
    cuda_graphs: bool = False            # replay decode steps from CUDA graphs (CUDA only)

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EngineConfig.{name} must be a positive integer, got {value!r}.")
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"EngineConfig.kv_dtype must be one of {', '.join(KV_DTYPES)}, got {self.kv_dtype!r}.")


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    output_ids: list[int] = field(default_factory=list)
    status: str = WAITING
    num_computed: int = 0                # tokens whose keys and values are in the cache
    blocks: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # hashes of the full blocks computed so far
    cached_tokens: int = 0               # prompt tokens served from the prefix cache (at admission)
    preemptions: int = 0
    finish_reason: str | None = None
    text: str = ""                       # output text so far (stop strings cut)
    sent: int = 0                        # characters of text already streamed
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    finish_time: float | None = None
    generator: torch.Generator | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


@dataclass
class RequestOutput:
    """What one step produced for one request: the new token ids and text, and whether it is done."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None = None


@dataclass
class StepTrace:
    """What the scheduler decided in one step (for the notebook's trace)."""

    step: int
    prefill: dict[str, int]      # request -> prompt tokens computed this step
    decode: list[str]            # requests that decoded one token
    admitted: list[str]
    finished: list[str]
    preempted: list[str]
    waiting: int
    blocks_used: int
    tokens: int


class Engine:
    """Continuous batching on a paged cache; see the module docstring."""

    def __init__(self, model, tokenizer, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.tokenizer = tokenizer
        c = model.config
        self.max_model_len = config.max_model_len or int(c.max_position_embeddings)
        if self.max_model_len > c.max_position_embeddings:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's context of "
                             f"{c.max_position_embeddings} tokens.")
        num_blocks = config.num_blocks
        if config.kv_cache_bytes is not None:
            dtype = KV_DTYPES[config.kv_dtype] or next(model.parameters()).dtype
            head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
            per_block = PagedKVPool.bytes_per_block(config.block_size, c.num_hidden_layers, c.num_key_value_heads,
                                                    head_dim, dtype)
            num_blocks = config.kv_cache_bytes // per_block
            if num_blocks < 1:
                raise ValueError(f"kv_cache_bytes={config.kv_cache_bytes} is less than one block ({per_block} bytes).")
        self.num_blocks = num_blocks
        self.runner = ModelRunner(model, num_blocks=num_blocks, block_size=config.block_size,
                                  kv_dtype=config.kv_dtype, kv_scale=config.kv_scale,
                                  cuda_graphs=config.cuda_graphs, max_model_len=self.max_model_len,
                                  max_batch=config.max_num_seqs)
        self.blocks = BlockPool(num_blocks, caching=config.enable_prefix_caching)
        self.vocab_size = int(c.vocab_size)
        self.eos_ids = self._eos_ids(model, tokenizer)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()
        self.step_count = 0
        self.traces: list[StepTrace] = []
        self.stats = {"prompt_tokens": 0, "cached_tokens": 0, "computed_tokens": 0, "preemptions": 0,
                      "max_blocks_used": 0, "max_running": 0, "steps": 0}

    @staticmethod
    def _eos_ids(model, tokenizer) -> set[int]:
        ids = set()
        for source in (getattr(model, "generation_config", None), model.config, tokenizer):
            value = getattr(source, "eos_token_id", None)
            if value is not None:
                ids.update([value] if isinstance(value, int) else value)
        return ids

    # ---- requests --------------------------------------------------------------------------
    def add_request(self, prompt_ids, params: SamplingParams | None = None, *, request_id: str | None = None,
                    arrival: float | None = None) -> str:
        """Queue a request; a request that can never be served raises RequestError (nothing is queued)."""
        params = params or SamplingParams()
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise RequestError("The prompt is empty; give at least one token.")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.vocab_size:
            raise RequestError(f"Prompt token ids must lie in 0..{self.vocab_size - 1} (the model's vocabulary).")
        bad = [t for t in params.stop_token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"stop_token_ids {bad} are not in the vocabulary (0..{self.vocab_size - 1}).")
        n_prompt, limit = len(prompt_ids), self.max_model_len
        if n_prompt >= limit:
            raise RequestError(f"The prompt has {n_prompt} tokens but the model's context is {limit}: shorten it "
                               "so that at least one token can be generated.")
        if n_prompt + params.max_tokens > limit:
            raise RequestError(f"prompt ({n_prompt} tokens) + max_tokens ({params.max_tokens}) = "
                               f"{n_prompt + params.max_tokens} exceeds the context of {limit} tokens; ask for at most "
                               f"{limit - n_prompt} tokens.")
        need = blocks_needed(n_prompt + params.max_tokens, self.config.block_size)
        if need > self.num_blocks:
            raise RequestError(f"This request needs up to {need} KV blocks but the whole cache has {self.num_blocks}; "
                               "it could never run. Lower max_tokens or give the engine more KV-cache memory.")
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self.requests and self.requests[rid].status != FINISHED:
            raise RequestError(f"A request with id {rid!r} is still running; use another id.")
        gen = None
        if not params.greedy:
            gen = torch.Generator().manual_seed(params.seed if params.seed is not None else
                                                int(torch.randint(0, 2**62, (1,))))
        req = Request(rid, prompt_ids, params, time.perf_counter() if arrival is None else arrival, generator=gen)
        self.requests[rid] = req
        self.waiting.append(req)
        self.stats["prompt_tokens"] += n_prompt
        return rid

    def abort(self, request_id: str) -> None:
        """Drop a request (a client went away): its blocks go back to the pool. No output is produced for it;
        call ``release`` to forget it."""
        req = self.requests.get(request_id)
        if req is None or req.status == FINISHED:
            return
        if req in self.running:
            self.running.remove(req)
        if req in self.waiting:
            self.waiting.remove(req)
        self._finish(req, "abort")

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- scheduling ------------------------------------------------------------------------
    def _blocks_for(self, req: Request, n_new: int) -> int:
        return blocks_needed(req.num_computed + n_new, self.config.block_size) - len(req.blocks)

    def _allocate(self, req: Request, n_new: int) -> None:
        for _ in range(self._blocks_for(req, n_new)):
            req.blocks.append(self.blocks.allocate())

    def _preempt(self, req: Request) -> None:
        """Recomputation: free every block; the request waits at the front and prefills again later."""
        self.blocks.free_all(req.blocks)
        req.blocks, req.hashes, req.num_computed = [], [], 0
        req.status, req.preemptions = WAITING, req.preemptions + 1
        self.waiting.appendleft(req)
        self.stats["preemptions"] += 1

    def _admit_prefix(self, req: Request) -> None:
        """Take the cached blocks of the longest cached prefix (never the whole prompt: one token is computed)."""
        if not self.config.enable_prefix_caching:
            return
        tokens = req.all_ids
        usable = (len(tokens) - 1) // self.config.block_size
        hashes = prefix_hashes(tokens[:usable * self.config.block_size], self.config.block_size)
        hit = self.blocks.lookup(hashes)
        for block in hit:
            self.blocks.take(block)
        req.blocks, req.hashes = list(hit), hashes[:len(hit)]
        req.num_computed = req.cached_tokens = len(hit) * self.config.block_size
        self.stats["cached_tokens"] += req.cached_tokens

    def schedule(self) -> tuple[list[tuple[Request, int]], list[str], list[str]]:
        """Decide this step's work: (request, new tokens) pairs, the admitted ids and the preempted ids."""
        budget, scheduled, preempted, admitted = self.config.max_num_batched_tokens, [], [], []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed, budget)
            while self._blocks_for(req, n) > self.blocks.num_free:
                victim = self.running.pop()               # the most recently admitted
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is req:
                    break
            else:
                self._allocate(req, n)
                scheduled.append((req, n))
                budget -= n
                i += 1
                continue
            break  # req itself was preempted: it was the last one running
        # admit waiting requests in arrival order while the budget, the batch size and the blocks allow
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs and not preempted:
            req = self.waiting[0]
            if req.num_computed == 0 and not req.blocks:
                self._admit_prefix(req)
            n = min(req.num_tokens - req.num_computed, budget)
            if self._blocks_for(req, n) > self.blocks.num_free:
                if req.blocks:  # give the cached blocks back; try again next step
                    self.stats["cached_tokens"] -= req.cached_tokens
                    self.blocks.free_all(req.blocks)
                    req.blocks, req.hashes, req.num_computed, req.cached_tokens = [], [], 0, 0
                break
            self.waiting.popleft()
            self._allocate(req, n)
            req.status = RUNNING
            self.running.append(req)
            scheduled.append((req, n))
            admitted.append(req.request_id)
            budget -= n
        return scheduled, admitted, preempted

    # ---- one step ----------------------------------------------------------------------------
    def _build_batch(self, scheduled: list[tuple[Request, int]]) -> StepBatch:
        bs = self.config.block_size
        b = StepBatch([], [], [], [], [], [], [])
        for req, n in scheduled:
            start = req.num_computed
            tokens = req.all_ids
            b.token_ids += tokens[start:start + n]
            b.positions += list(range(start, start + n))
            b.slots += [req.blocks[t // bs] * bs + t % bs for t in range(start, start + n)]
            b.q_lens.append(n)
            b.ctx_lens.append(start + n)
            b.block_tables.append(req.blocks)
            b.want_logits.append(start + n == req.num_tokens)
        return b

    def _register_full_blocks(self, req: Request) -> None:
        """Hash the blocks that this step filled, chaining from the previous block's hash."""
        bs, tokens = self.config.block_size, req.all_ids
        while len(req.hashes) < req.num_computed // bs:
            i = len(req.hashes)
            parent = req.hashes[-1] if req.hashes else ROOT
            h = block_hash(parent, tokens[i * bs:(i + 1) * bs])
            req.hashes.append(h)
            self.blocks.register(req.blocks[i], h)

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, sample, and return what each request produced."""
        scheduled, admitted, preempted = self.schedule()
        outputs: list[RequestOutput] = []
        finished: list[str] = []
        if scheduled:
            batch = self._build_batch(scheduled)
            logits = self.runner.step(batch)
            greedy = logits.argmax(-1).tolist()  # one device-to-host copy for every greedy request
            now = time.perf_counter()
            row = 0
            for (req, n), wants in zip(scheduled, batch.want_logits):
                req.num_computed += n
                self.stats["computed_tokens"] += n
                self._register_full_blocks(req)
                if not wants:
                    continue
                token = greedy[row] if req.params.greedy else sample(logits[row], req.params, req.generator)
                row += 1
                out = self._append_token(req, token, now)
                outputs.append(out)
                if out.finished:
                    finished.append(req.request_id)
            self.running = [r for r in self.running if r.status == RUNNING]
        used = self.num_blocks - self.blocks.num_free
        self.stats["max_blocks_used"] = max(self.stats["max_blocks_used"], used)
        self.stats["max_running"] = max(self.stats["max_running"], len(scheduled))
        self.stats["steps"] += 1
        self.traces.append(StepTrace(
            self.step_count,
            {r.request_id: n for r, n in scheduled if not (n == 1 and r.num_computed > len(r.prompt_ids))},
            [r.request_id for r, n in scheduled if n == 1 and r.num_computed > len(r.prompt_ids)],
            admitted, finished, preempted, len(self.waiting), used, sum(n for _, n in scheduled)))
        if len(self.traces) > 10_000:
            del self.traces[:5_000]
        self.step_count += 1
        return outputs

    def _append_token(self, req: Request, token: int, now: float) -> RequestOutput:
        req.output_ids.append(token)
        req.token_times.append(now)
        if req.first_token_time is None:
            req.first_token_time = now
        p, reason = req.params, None
        if (token in self.eos_ids and not p.ignore_eos) or token in p.stop_token_ids:
            reason = "stop"
        elif len(req.output_ids) >= p.max_tokens:
            reason = "length"
        new_text, stopped = self._update_text(req, final=reason is not None)
        if stopped:
            reason = "stop"
        if reason is not None:
            self._finish(req, reason, now)
        return RequestOutput(req.request_id, [token], new_text, reason is not None, reason)

    def _update_text(self, req: Request, final: bool) -> tuple[str, bool]:
        """Incremental detokenization: decode every output token, cut at a stop string, hand out what is new.

        Held back until the next token: an incomplete UTF-8 character at the end (it decodes to U+FFFD),
        and a tail that could be the start of a stop string (it must not reach the client if the stop
        string completes). Returns (new text, whether a stop string was found).
        """
        ids = [t for t in req.output_ids if t not in self.eos_ids or req.params.ignore_eos]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in req.params.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, final = text[:cut], True
        safe = len(text)
        if not final:
            safe -= text.endswith("\ufffd")
            hold = max((k for s in req.params.stop for k in range(1, len(s)) if text[:safe].endswith(s[:k])),
                       default=0)
            safe -= hold
        req.text = text
        new = text[req.sent:safe]
        req.sent = max(req.sent, safe)
        return new, cut >= 0

    def _finish(self, req: Request, reason: str, now: float | None = None) -> None:
        req.status, req.finish_reason = FINISHED, reason
        req.finish_time = time.perf_counter() if now is None else now
        self.blocks.free_all(req.blocks)
        req.blocks = []

    # ---- conveniences ------------------------------------------------------------------------
    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None) -> list[Request]:
        """Serve a list of prompts (token-id lists or strings) to the end; the finished requests, in order."""
        prompts = [self.tokenizer.encode(p) if isinstance(p, str) else p for p in prompts]
        params = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"Give one SamplingParams per prompt ({len(prompts)}), got {len(params)}.")
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        while self.has_unfinished():
            self.step()
        return [self.requests[i] for i in ids]

    def release(self, request_id: str) -> None:
        """Forget a finished request (a long-running server calls this once it has answered)."""
        req = self.requests.get(request_id)
        if req is not None and req.status == FINISHED:
            del self.requests[request_id]
