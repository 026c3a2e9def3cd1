"""The course server against llama.cpp's own OpenAI-compatible server, over HTTP, with the `openai` client.

    python -m course_lib.serving.http_bench --threads 1 --n 24     # -> data/results/cpu_serving_http.json

``load_test`` replays one seeded workload (``workload.make_workload``) against a server: each request sent at
its Poisson arrival time from its own thread, streamed, greedy, ``max_tokens`` = its output length, the end of
sequence suppressed so that every server generates the same tokens (``request_body``). Prompts go as text:
llama-cpp-python's server takes ``prompt: str | list[str]``, not token ids; both tokenize it with the same BPE
and no BOS. TTFT, TPOT and latency are measured in the client from each request's scheduled arrival; tokens
are counted from the stream's ``usage`` (the course server) or its token chunks (llama-cpp-python streams one
chunk per token and sends no usage). Each server runs in its own process with one thread, as deployed (``launch``);
llama-cpp-python's with ``interrupt_requests`` off (its default cuts a stream short when another request waits).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.env import REPO_ROOT
from .launch import MODEL, course_server, engine_stats, llama_cpp_server, require_llama_server
from .workload import RequestTiming, ServeRun, Workload

__all__ = ["HttpRun", "course_server", "llama_cpp_server", "load_test", "max_overlap", "record_http", "request_body"]

LOCK_SOURCE = "llama_cpp/server/app.py"
ONE_AT_A_TIME = (f"llama-cpp-python's server does not batch concurrent requests: every completion holds "
                 f"llama_inner_lock, one anyio Lock taken in get_llama_proxy ({LOCK_SOURCE}), for as long as it "
                 "generates, so requests queue and are served one at a time.")


@dataclass
class HttpRun(ServeRun):
    """A ServeRun measured through HTTP, with each answer's text and the requests of a wrong length."""

    texts: list[str] = field(default_factory=list)
    wrong_lengths: list[tuple[int, int, int]] = field(default_factory=list)  # (request, max_tokens, streamed)


def request_body(server: str, eos_id: int) -> dict:
    """Extra fields that make `server` ("course" or "llama.cpp") generate exactly max_tokens greedily."""
    if server == "course":
        return {"ignore_eos": True}
    if server == "llama.cpp":
        return {"logit_bias": {str(eos_id): -100.0}, "repeat_penalty": 1.0}
    raise ValueError(f"server must be 'course' or 'llama.cpp', got {server!r}.")


def max_overlap(timings: Sequence[RequestTiming]) -> int:
    """The most requests streaming at once (between first token and finish), as the client saw them."""
    events = sorted([(t.first_token, 1) for t in timings] + [(t.finish, -1) for t in timings])
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _stream_one(client, model: str, prompt: str, max_tokens: int, extra: dict, t0: float):
    """One streamed completion: (token chunk times, finish time, text, tokens counted), seconds since t0."""
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True}, extra_body=extra)
    times: list[float] = []
    pieces: list[str] = []
    finish, usage = None, None
    for chunk in stream:
        now = time.perf_counter() - t0
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            pieces.append(choice.text or "")
            if choice.finish_reason is None:
                times.append(now)
            else:
                finish = now
    if not times:
        raise RuntimeError(f"The server streamed no token for a request of max_tokens={max_tokens}.")
    return times, times[-1] if finish is None else finish, "".join(pieces), len(times) if usage is None else usage


def load_test(base_url: str, model: str, workload: Workload, *, tokenizer, server: str = "course",
              eos_id: int | None = None, max_concurrency: int | None = None, timeout: float = 300.0,
              name: str | None = None) -> HttpRun:
    """Replay `workload` against the OpenAI-compatible server at `base_url`; see the module docstring.

    server:          "course" or "llama.cpp": how the end-of-sequence token is suppressed (``request_body``).
    max_concurrency: at most this many requests in flight (a later one waits, and its wait counts in its TTFT).
    timeout:         seconds for one request, and for the whole run after its last arrival.
    """
    import openai

    extra = request_body(server, tokenizer.eos_token_id if eos_id is None else eos_id)
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=timeout)
    gate = threading.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()
    prompts = [tokenizer.decode(list(w.prompt_ids)) for w in workload.items]
    results: list[tuple | None] = [None] * len(prompts)
    errors: list[BaseException] = []
    t0 = time.perf_counter() + 0.05  # a moment for the threads to start

    def send(i: int) -> None:
        w = workload.items[i]
        time.sleep(max(0.0, t0 + w.arrival - time.perf_counter()))
        try:
            with gate:
                results[i] = _stream_one(client, model, prompts[i], w.output_len, extra, t0)
        except BaseException as exc:  # raised below, once every thread is done
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(prompts))]
    for t in threads:
        t.start()
    deadline = t0 + max((w.arrival for w in workload.items), default=0.0) + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()))
    client.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(prompts)} requests to {base_url} failed; the first: "
                           f"{type(errors[0]).__name__}: {errors[0]}") from errors[0]
    if any(r is None for r in results):
        raise TimeoutError(f"{results.count(None)} requests to {base_url} were not answered within {timeout:g} s.")
    timings, texts, wrong = [], [], []
    for i, (w, (times, finish, text, count)) in enumerate(zip(workload.items, results)):
        timings.append(RequestTiming(w.arrival, times[0], finish, count, times))
        texts.append(text)
        if count != w.output_len:
            wrong.append((i, w.output_len, count))
    extra_cols = {"max streaming": max_overlap(timings), "wrong lengths": len(wrong)}
    return HttpRun(name or f"{server} server", timings, max(t.finish for t in timings), 0, extra_cols, texts, wrong)


def _measure(url: str, server: str, name: str, precision: str, work: Workload, warm: Workload, tok, repeats: int,
             stats=None) -> tuple[dict, list[str]]:
    """A warm-up, then `repeats` runs: the median run by throughput (with the range), and its texts."""
    load_test(url, MODEL, warm, tokenizer=tok, server=server)
    runs = []
    for _ in range(repeats):
        if stats:
            stats()
        run = load_test(url, MODEL, work, tokenizer=tok, server=server, name=name)
        runs.append((run.summary(), stats()["max_running"] if stats else None, run.texts))
    runs.sort(key=lambda r: r[0]["tokens/s"])
    s, batch, texts = runs[len(runs) // 2]
    keep = ("tokens/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "latency p50 ms", "latency p99 ms",
            "max streaming", "wrong lengths")
    spread = {"tokens/s min": runs[0][0]["tokens/s"], "tokens/s max": runs[-1][0]["tokens/s"]}
    return {"server": name, "precision": precision, **{k: s[k] for k in keep}, **spread, "max batch": batch}, texts


def record_http(*, threads: int = 1, n: int = 24, rate: float = 40.0, repeats: int = 3, name: str = "cpu_serving_http",
                directory: Path | None = None) -> Path:
    """Every server on the bundled model and one seeded workload; the result file's path."""
    import torch

    from ..core.results import save_result
    from ..core.tables import print_table
    from ..lm.models import load_model
    from ..mixed.gguf_io import write_gguf
    from .workload import make_workload

    require_llama_server()
    import llama_cpp

    torch.set_num_threads(threads)
    model, tok = load_model(device="cpu", dtype=torch.float32)
    max_len = model.config.max_position_embeddings
    work = make_workload(tok, n, prompt_mean=48, output_mean=48, max_prompt=192, max_output=192, rate=rate,
                         seed=0, max_len=max_len)
    warm = make_workload(tok, 4, prompt_mean=16, output_mean=8, seed=1)
    # no prefix caching: llama-cpp-python's server keeps no cache across requests either (cache=False)
    config = dict(num_blocks=512, max_num_seqs=max(n, 1), max_num_batched_tokens=512, max_model_len=max_len,
                  enable_prefix_caching=False)
    fp32 = "float32 weights (stored bf16), float32 KV"
    rows, texts = [], []
    with course_server(threads=threads, config=config) as url:
        row, out = _measure(url, "course", "course server, own process", fp32, work, warm, tok, repeats,
                            lambda: engine_stats(url))
        rows.append(row)
        texts.append(out)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = write_gguf(model, Path(tmp) / "course-F16.gguf", "F16",
                          tokenizer_json=REPO_ROOT / "data/course-model/tokenizer.json")
        with llama_cpp_server(gguf, n_threads=threads, n_ctx=max_len) as url:
            row, out = _measure(url, "llama.cpp", "llama-cpp-python server, own process", "F16 weights, F16 KV",
                                work, warm, tok, repeats)
            rows.append(row)
            texts.append(out)
    print_table(rows)
    same = sum(a == b for a, b in zip(texts[0], texts[-1]))
    return save_result(
        name, rows,
        description=(f"HTTP serving of the bundled model through the openai client: the course server (float32) and "
                     f"llama-cpp-python {llama_cpp.__version__}'s server (F16 GGUF), {threads} thread(s) each, on one "
                     f"workload: {work.description}. Streamed, greedy, eos suppressed; times from each request's "
                     f"scheduled arrival; the median of {repeats} runs after a warm-up, with the range of tokens/s."),
        command=(f"python -m course_lib.serving.http_bench --threads {threads} --n {n} --rate {rate:g} "
                 f"--repeats {repeats} --name {name}"),
        summary={"llama_cpp_batching": ONE_AT_A_TIME, "llama_cpp_source": LOCK_SOURCE, "workload": work.description,
                 "output tokens": work.output_tokens, "threads": threads, "repeats": repeats,
                 "identical greedy texts, course vs llama.cpp": f"{same} of {n}",
                 "llama_cpp_python": llama_cpp.__version__},
        directory=directory)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m course_lib.serving.http_bench", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads = llama.cpp threads")
    p.add_argument("--n", type=int, default=24, help="requests in the workload")
    p.add_argument("--rate", type=float, default=40.0, help="Poisson arrivals, requests per second")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per server (the median is recorded)")
    p.add_argument("--name", default="cpu_serving_http", help="result name: data/results/<name>.json")
    args = p.parse_args(argv)
    try:
        print(record_http(threads=args.threads, n=args.n, rate=args.rate, repeats=args.repeats, name=args.name))
    except ImportError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
