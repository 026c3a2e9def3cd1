"""The HTTP load generator (course_lib.serving.http_bench) against the course server, in this process and in its
own, and against llama-cpp-python's server when llama_cpp is built: every request answered with exactly its
tokens, the course engine batching concurrent requests, llama.cpp's serving them one at a time."""

from __future__ import annotations

import pytest
import torch

from course_lib.core.optional import have, missing

if not have("fastapi", "uvicorn", "openai"):
    pytest.skip("the server's libraries are not installed: pip install -e '.[serve]'", allow_module_level=True)

from course_lib.core.env import REPO_ROOT  # noqa: E402
from course_lib.lm.models import load_model  # noqa: E402
from course_lib.serving import Engine, EngineConfig, SamplingParams  # noqa: E402
from course_lib.serving import launch  # noqa: E402
from course_lib.serving.http_bench import HttpRun, load_test, max_overlap, request_body  # noqa: E402
from course_lib.serving.server import serve  # noqa: E402
from course_lib.serving.workload import RequestTiming, ServeRun, WorkItem, Workload, make_workload  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "course-model"
LIMIT = 30  # seconds: a server's start-up, and one load test


@pytest.fixture(scope="module")
def course():
    return load_model(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def work(course):
    """6 requests with short outputs, all at t=0 (so that a batching server batches them)."""
    _, tok = course
    return make_workload(tok, 6, prompt_mean=16, output_mean=8, max_prompt=32, max_output=12, seed=3)


@pytest.fixture(scope="module")
def greedy(course, work):
    """The engine's own greedy answers (eos ignored) to the prompts as the servers see them: decoded, re-encoded."""
    model, tok = course
    ids = [tok.encode(tok.decode(list(w.prompt_ids))) for w in work.items]
    outs = [Engine(model, tok, EngineConfig(num_blocks=64)).generate([p], SamplingParams(max_tokens=w.output_len,
                                                                                          ignore_eos=True))[0]
            for p, w in zip(ids, work.items)]
    return [o.text for o in outs]


def check_run(run: HttpRun, work: Workload) -> None:
    assert isinstance(run, ServeRun)
    assert [t.output_len for t in run.timings] == [w.output_len for w in work.items]
    assert not run.wrong_lengths and run.extra["wrong lengths"] == 0
    s = run.summary()
    assert s["tokens/s"] > 0 and 0 < s["TTFT p50 ms"] <= s["latency p50 ms"] <= s["latency p99 ms"]
    assert all(0 <= t.first_token - t.arrival <= t.latency for t in run.timings)


def test_request_bodies_and_overlap():
    assert request_body("course", 0) == {"ignore_eos": True}
    assert request_body("llama.cpp", 7) == {"logit_bias": {"7": -100.0}, "repeat_penalty": 1.0}
    with pytest.raises(ValueError, match="course"):
        request_body("vllm", 0)
    spans = [RequestTiming(0, 1, 3, 2), RequestTiming(0, 2, 4, 2), RequestTiming(0, 5, 6, 2)]
    assert max_overlap(spans) == 2 and max_overlap(spans[2:]) == 1


def test_course_server_batches_and_answers_every_token(course, work, greedy):
    model, tok = course
    engine = Engine(model, tok, EngineConfig(num_blocks=128, max_num_seqs=8, enable_prefix_caching=False))
    with serve(engine, NAME) as url:
        run = load_test(url, NAME, work, tokenizer=tok, timeout=LIMIT)
        batched = engine.stats["max_running"]
        engine.stats["max_running"] = 0
        one = load_test(url, NAME, work, tokenizer=tok, max_concurrency=1, timeout=LIMIT)
    check_run(run, work)
    check_run(one, work)
    assert batched > 1 and run.extra["max streaming"] > 1          # concurrent requests shared engine steps
    assert engine.stats["max_running"] == 1 and one.extra["max streaming"] == 1
    assert run.texts == one.texts == greedy


def test_course_server_in_its_own_process(course, work, greedy):
    _, tok = course
    config = {"num_blocks": 128, "max_num_seqs": 8, "enable_prefix_caching": False}
    with launch.course_server(config=config, startup_timeout=LIMIT) as url:
        launch.engine_stats(url)
        run = load_test(url, NAME, work, tokenizer=tok, timeout=LIMIT)
        stats = launch.engine_stats(url)
    check_run(run, work)
    assert stats["max_running"] > 1 and run.texts == greedy


def test_a_missing_llama_cpp_names_make_llama_cpp(monkeypatch):
    monkeypatch.setattr(launch, "missing", lambda *names: [n for n in names if n == "llama_cpp"])
    with pytest.raises(ImportError, match="make llama-cpp"):
        launch.require_llama_server()
    monkeypatch.setattr(launch, "missing", lambda *names: [n for n in names if n == "sse_starlette"])
    with pytest.raises(ImportError, match=r"sse_starlette.*\[serve\]"):
        launch.require_llama_server()


@pytest.fixture(scope="module")
def gguf(course, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    if missing(*launch.SERVER_PACKAGES):
        pytest.skip(f"llama_cpp.server needs {', '.join(missing(*launch.SERVER_PACKAGES))}: pip install -e '.[serve]'")
    from course_lib.mixed.gguf_io import write_gguf

    model, _ = course
    return write_gguf(model, tmp_path_factory.mktemp("gguf") / "course-F16.gguf", "F16",
                      tokenizer_json=REPO_ROOT / "data/course-model/tokenizer.json")


def test_llama_cpp_server_one_request_at_a_time(course, work, greedy, gguf):
    _, tok = course
    with launch.llama_cpp_server(gguf, n_threads=1, startup_timeout=LIMIT) as url:
        run = load_test(url, NAME, work, tokenizer=tok, server="llama.cpp", timeout=LIMIT)
    check_run(run, work)    # eos suppressed, and no answer cut short by the next request (interrupt_requests off)
    assert run.extra["max streaming"] == 1
    assert sum(a == b for a, b in zip(run.texts, greedy)) >= len(greedy) - 1  # F16 vs float32: the same model


def test_llama_cpp_server_that_fails_shows_its_log(tmp_path, gguf):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(RuntimeError, match="exited with code") as info:
        with launch.llama_cpp_server(bad, startup_timeout=LIMIT):
            pass
    assert "gguf" in str(info.value).lower()
    with pytest.raises(FileNotFoundError, match="write_gguf"):
        with launch.llama_cpp_server(tmp_path / "absent.gguf"):
            pass


def test_an_unanswered_workload_raises_clearly(course):
    _, tok = course
    closed = Workload((WorkItem((1, 2, 3), 4, 0.0),), "one request")
    with pytest.raises(RuntimeError, match="1 of 1 requests .* failed"):
        load_test("http://127.0.0.1:9/v1", NAME, closed, tokenizer=tok, timeout=5)
