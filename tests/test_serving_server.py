"""The OpenAI-compatible server, through the official `openai` client on loopback: completions (plain and
streamed) equal the engine's and transformers' greedy output, chat through the real model's template,
concurrent clients batched together, errors in OpenAI's shape, disconnects aborting their request, and
the server's context manager stopping everything."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from course_lib.core.optional import have

if not have("fastapi", "uvicorn", "openai"):
    pytest.skip("the server's libraries are not installed: pip install -e '.[serve]'", allow_module_level=True)

import httpx  # noqa: E402  (openai's own dependency, here through the client's tests only for raw bodies)
import openai  # noqa: E402

from course_lib.core.env import REPO_ROOT  # noqa: E402
from course_lib.lm.errors import ModelUnavailableError  # noqa: E402
from course_lib.lm.models import load_model  # noqa: E402
from course_lib.serving import Engine, EngineConfig, SamplingParams  # noqa: E402
from course_lib.serving.server import serve  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "course-model"
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def course():
    model, tok = load_model(dtype=torch.float32)
    return model, tok


@pytest.fixture(scope="module")
def server(course):
    """The bundled model behind one server for the whole module: (engine, base URL, client)."""
    model, tok = course
    engine = Engine(model, tok, EngineConfig(num_blocks=256, max_num_seqs=16))
    with serve(engine, NAME) as url:
        yield engine, url, openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)


def hf_greedy(model, tok, prompt_ids: list[int], n: int) -> str:
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return tok.decode(out[0, len(prompt_ids):], skip_special_tokens=True)


def test_models(server):
    _, url, client = server
    models = client.models.list().data
    assert [m.id for m in models] == [NAME] and models[0].object == "model"
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")


def test_completion_equals_engine_and_transformers_greedy(server, course):
    engine, _, client = server
    model, tok = course
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0)
    ids = tok.encode(PROMPT)
    alone = Engine(model, tok, EngineConfig(num_blocks=64)).generate([ids], SamplingParams(max_tokens=24))[0]
    choice = r.choices[0]
    assert r.object == "text_completion" and r.model == NAME and r.id.startswith("cmpl-")
    assert choice.text == alone.text == hf_greedy(model, tok, ids, 24)
    assert choice.finish_reason == alone.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(alone.output_ids))
    assert r.usage.total_tokens == len(ids) + len(alone.output_ids)
    # the same prompt as token ids; the server forgot both requests once answered
    by_ids = client.completions.create(model=NAME, prompt=ids, max_tokens=24, temperature=0)
    assert by_ids.choices[0].text == choice.text
    assert not engine.requests


def stream_text(client, **kwargs) -> tuple[str, list]:
    chunks = list(client.completions.create(stream=True, **kwargs))
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks


def test_streamed_completion_adds_up(server):
    _, _, client = server
    kwargs = dict(model=NAME, prompt=PROMPT, max_tokens=20, temperature=0)
    full = client.completions.create(**kwargs).choices[0]
    text, chunks = stream_text(client, **kwargs)
    assert text == full.text and len(chunks) > 5
    assert chunks[-1].choices[0].finish_reason == full.finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "text_completion"
    # stream_options.include_usage: one more chunk, with no choice and the usage
    _, chunks = stream_text(client, stream_options={"include_usage": True}, **kwargs)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_streamed_stop_string_across_tokens(server, course):
    """A stop string that begins inside one token and ends in the next: the stream never shows its start."""
    _, _, client = server
    model, tok = course
    ids = tok.encode(PROMPT)
    out = Engine(model, tok, EngineConfig(num_blocks=64)).generate([ids], SamplingParams(max_tokens=24))[0]
    pieces = [tok.decode(out.output_ids[:i + 1]) for i in range(len(out.output_ids))]
    i = next(i for i in range(1, len(pieces) - 1)
             if len(pieces[i]) - len(pieces[i - 1]) >= 3 and len(pieces[i + 1]) > len(pieces[i]))
    stop = pieces[i][-2:] + pieces[i + 1][len(pieces[i])]
    expected = out.text[:out.text.index(stop)]
    kwargs = dict(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "never appears"])
    full = client.completions.create(**kwargs).choices[0]
    text, chunks = stream_text(client, **kwargs)
    assert full.text == text == expected and full.finish_reason == chunks[-1].choices[0].finish_reason == "stop"


def test_sampling_with_a_seed_repeats(server):
    _, _, client = server
    kwargs = dict(model=NAME, prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    a, b = (client.completions.create(**kwargs).choices[0].text for _ in range(2))
    assert a == b


def test_concurrent_clients_are_batched(server):
    engine, _, client = server
    engine.stats["max_running"] = 0
    prompts = [f"{PROMPT} there lived {who}" for who in
               ("a king", "a queen", "a fox", "a miller", "two sisters", "a knight", "an old man", "a cat")]

    def ask(prompt: str):
        return client.completions.create(model=NAME, prompt=prompt, max_tokens=32, temperature=0,
                                         extra_body={"ignore_eos": True})  # vLLM's extension

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, prompts))
    assert time.perf_counter() - start < 30
    assert all(a.usage.completion_tokens == 32 and a.choices[0].finish_reason == "length" for a in answers)
    assert engine.stats["max_running"] > 1        # they shared steps: continuous batching at work
    # batching does not change a greedy answer
    assert ask(prompts[3]).choices[0].text == answers[3].choices[0].text
    assert not engine.requests and not engine.has_unfinished()


BAD = [  # (endpoint, body, status, words in the message)
    ("completions", {"prompt": "word " * 600}, 400, "context"),
    ("completions", {"prompt": PROMPT, "max_tokens": 600}, 400, "exceeds the context"),
    ("completions", {"prompt": PROMPT, "temperature": -0.5}, 400, "temperature"),
    ("completions", {"prompt": PROMPT, "n": 2}, 400, "n=2"),
    ("completions", {"prompt": PROMPT, "top_p": 0}, 400, "top_p"),
    ("completions", {"prompt": [1, 2, 999999]}, 400, "vocabulary"),
    ("completions", {"prompt": ""}, 400, "empty"),
    ("completions", {"prompt": PROMPT, "stop": [""]}, 400, "stop"),
    ("completions", {"prompt": PROMPT, "logprobs": 2}, 400, "logprobs"),
    ("completions", {"prompt": PROMPT, "seed": 2**70}, 400, "seed"),
    ("completions", {"max_tokens": 4}, 400, "prompt"),                      # a field missing: 400, not 422
    ("completions", {"prompt": PROMPT, "max_tokens": "many"}, 400, "max_tokens"),
    ("completions", {"prompt": PROMPT, "model": "gpt-4"}, 404, "does not exist"),
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}, 400, "no chat template"),
]


@pytest.mark.parametrize("endpoint, body, status, words", BAD, ids=[f"{e}-{w}" for e, _, _, w in BAD])
def test_bad_requests_get_a_4xx_and_the_server_carries_on(server, endpoint, body, status, words):
    engine, url, client = server
    r = httpx.post(f"{url}/{endpoint}", json={"model": NAME, **body}, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"]
    ok = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=4, temperature=0)
    assert ok.usage.completion_tokens == 4 and not engine.has_unfinished()


def test_errors_through_the_openai_client(server):
    _, url, client = server
    with pytest.raises(openai.BadRequestError, match="n=2"):
        client.completions.create(model=NAME, prompt=PROMPT, n=2)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt=PROMPT)
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="exceeds the context"):
        list(client.completions.create(model=NAME, prompt=PROMPT, max_tokens=1000, stream=True))
    r = httpx.post(f"{url}/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


def test_a_failing_step_fails_its_requests_not_the_server(server, monkeypatch):
    engine, _, client = server
    real_step = engine.runner.step

    def broken(batch):
        monkeypatch.setattr(engine.runner, "step", real_step)   # fails once
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(engine.runner, "step", broken)
    with pytest.raises(openai.InternalServerError, match="simulated kernel failure"):
        client.completions.create(model=NAME, prompt=PROMPT, max_tokens=8)
    assert client.completions.create(model=NAME, prompt=PROMPT, max_tokens=8).usage.completion_tokens == 8


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
def test_a_client_that_goes_away_aborts_its_request(server, stream):
    engine, url, _ = server
    before = engine.stats["computed_tokens"]
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": 500, "ignore_eos": True, "stream": stream}
    if stream:  # read the first chunk, then hang up
        with httpx.stream("POST", f"{url}/completions", json=body, timeout=30) as r:
            assert next(line for line in r.iter_lines() if line.startswith("data: "))
    else:       # give up waiting for the whole answer
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/completions", json=body, timeout=httpx.Timeout(30, read=0.2))
    deadline = time.monotonic() + 10
    while engine.has_unfinished() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.has_unfinished() and not engine.requests
    assert engine.stats["computed_tokens"] - before < 400          # it stopped long before 500 tokens


def test_serve_stops_everything_even_after_an_exception(course):
    model, tok = course
    threads = set(threading.enumerate())
    with pytest.raises(ZeroDivisionError):
        with serve(Engine(model, tok, EngineConfig(num_blocks=32)), NAME) as url:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            assert httpx.get(f"{url}/models").status_code == 200
            1 / 0
    assert set(threading.enumerate()) <= threads             # uvicorn's and the engine's threads are gone
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_chat_with_the_real_model():
    try:
        model, tok = load_model("smollm2-135m", dtype=torch.float32)
    except ModelUnavailableError as exc:
        pytest.skip(f"the real model (smollm2-135m) is not installed: {exc}")
    engine = Engine(model, tok, EngineConfig(num_blocks=64, max_model_len=1024))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with serve(engine, "smollm2-135m") as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=24, temperature=0)
        chunks = list(client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=24,
                                                     temperature=0, stream=True))
    answer = r.choices[0].message
    assert r.object == "chat.completion" and answer.role == "assistant" and "Paris" in answer.content
    # transformers' greedy answer to the same template
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)
    assert answer.content == hf_greedy(model, tok, ids, r.usage.completion_tokens)
    assert r.usage.prompt_tokens == len(ids) and r.choices[0].finish_reason == "stop"   # it ended its turn
    # the stream: the role first, then the content, then the finish reason with an empty delta
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.content
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].choices[0].delta.content is None


def test_missing_libraries_name_the_extra():
    code = ("import sys; sys.modules['fastapi'] = None; import runpy; "
            "runpy.run_module('course_lib.serving.server', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 1 and "pip install 'course_lib[serve]'" in r.stderr and "fastapi" in r.stderr
    assert "Traceback" not in r.stderr  # one plain message, not an ImportError
