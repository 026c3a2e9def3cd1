"""Serving (chapter 13): a continuous-batching engine on a paged KV cache, and an OpenAI-compatible server.

Modules, one idea each:

* ``sampling``     per-request settings (greedy, temperature, top-k, top-p, stops) and the sampler;
* ``blocks``       the block pool with reference counts and prefix caching's hash chain;
* ``runner``       one model step on a flat batch: paged KV writes and reads, optional FP8 cache;
* ``engine``       the scheduler: continuous batching, chunked prefill, prefix caching, preemption;
* ``speculative``  speculative decoding with a draft model, and its acceptance rule;
* ``draft``        the bundled model's draft (chapter 08's student, distilled longer) and how it was made;
* ``teach``        the scheduler's admission written on plain integers (the exercises);
* ``workload``     a seeded synthetic workload (Poisson arrivals) and the baselines it is served by;
* ``bench``        the recorded benchmark (``python -m course_lib.bench serving``);
* ``async_engine`` one thread stepping the engine for many asyncio clients;
* ``server``       the OpenAI-compatible HTTP server (``python -m course_lib.serving.server``);
* ``http_bench``   the course server against llama.cpp's server over HTTP (servers started by ``launch``).
"""

from .blocks import BlockPool, block_hash, prefix_hashes
from .engine import Engine, EngineConfig, Request, RequestOutput
from .sampling import RequestError, SamplingParams

__all__ = ["BlockPool", "Engine", "EngineConfig", "Request", "RequestError", "RequestOutput", "SamplingParams",
           "block_hash", "prefix_hashes"]
