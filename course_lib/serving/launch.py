"""Servers in their own processes, for the HTTP benchmark (``http_bench``): llama-cpp-python's and the course's.

    with llama_cpp_server("course-F16.gguf", n_threads=1) as url:      # python -m llama_cpp.server
        ...                                                           # url: http://127.0.0.1:PORT/v1
    with course_server(threads=1, config={"max_num_seqs": 24}) as url:  # the course server on the bundled model
        engine_stats(url)["max_running"]

Each writes its log to a file (never to the notebook), waits until ``/v1/models`` answers (or raises with
the log's tail) and is always stopped at the end of the block.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..core.env import REPO_ROOT
from ..core.optional import missing

MODEL = "course-model"
SERVER_PACKAGES = ("sse_starlette", "starlette_context", "pydantic_settings")  # what llama_cpp.server imports

# llama.cpp's server through its own main(), with ggml's extra buffer types (repacked and AMX weight layouts) set
# as course_lib.mixed.llama_cpp.load sets them (the server's settings have no switch for them; on the course's
# CPU machine ggml's AMX matmul crashed with SIGSEGV).
_LLAMA_LAUNCHER = """
import sys
import llama_cpp.llama_cpp as capi
from llama_cpp.server.__main__ import main
default = capi.llama_model_default_params
def params():
    p = default()
    p.use_extra_bufts = {extra}
    return p
capi.llama_model_default_params = params
sys.argv[0] = "python -m llama_cpp.server"
main()
"""
# The course server as ``python -m course_lib.serving.server`` runs it, plus a route that returns the engine's
# counters (and resets its max batch): the benchmark's own window into the other process.
_COURSE_LAUNCHER = """
import torch, uvicorn
torch.set_num_threads({threads})
from course_lib.lm.models import load_model
from course_lib.serving.engine import Engine, EngineConfig
from course_lib.serving.server import create_app
model, tok = load_model(device="cpu", dtype=torch.float32)
engine = Engine(model, tok, EngineConfig(**{config!r}))
app = create_app(engine, {model!r})
@app.post("/bench/stats")
def stats():
    out = {{**engine.stats, "steps": engine.step_count}}
    engine.stats["max_running"] = 0
    return out
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
"""


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


@contextlib.contextmanager
def _server_process(what: str, code: str, args: Sequence[str], port: int, threads: int, startup_timeout: float,
                    log_path: str | Path | None) -> Iterator[str]:
    """``python -c code args`` as a server on `port`, its output to a log file; yields its base URL once
    ``/v1/models`` answers and always stops it. Without `log_path` the log is a temporary file, deleted after."""
    log = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="server_", suffix=".log")[1])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    url = f"http://127.0.0.1:{port}/v1"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with code {proc.returncode} before answering (log {log}):\n"
                                   f"{_tail(log)}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not answer {url}/models within {startup_timeout:g} s (log {log}):\n"
                                   f"{_tail(log)}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not log_path:
            log.unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_llama_server() -> None:
    """An ImportError naming what to install when llama-cpp-python or its server's packages are missing."""
    from ..mixed.llama_cpp import BUILD_HINT

    if missing("llama_cpp"):
        raise ImportError(BUILD_HINT)
    gone = missing(*SERVER_PACKAGES)
    if gone:
        raise ImportError(f"llama-cpp-python's server needs {', '.join(gone)}: pip install -c constraints.txt "
                          "-e '.[serve]' (the course's serve extra carries them).")


@contextlib.contextmanager
def llama_cpp_server(gguf_path, *, n_threads: int = 1, port: int = 0, n_ctx: int = 512, alias: str = MODEL,
                     extra_buffers: bool | None = None, startup_timeout: float = 120.0,
                     log_path: str | Path | None = None) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a GGUF file for the length of a ``with`` block; yields the base URL.

    n_threads sets both llama.cpp thread counts (generation and prompt batches); port 0 picks a free port.
    The log goes to a file, never to the notebook; a server that does not answer raises with the log's tail.
    extra_buffers: as in ``course_lib.mixed.llama_cpp.load`` (default: off on a CPU with AMX tiles).
    """
    from ..mixed.llama_cpp import cpu_has_amx

    require_llama_server()
    path = Path(gguf_path)
    if not path.is_file():
        raise FileNotFoundError(f"No GGUF file at {path}; write one with course_lib.mixed.gguf_io.write_gguf.")
    extra = not cpu_has_amx() if extra_buffers is None else extra_buffers
    port = port or _free_port()
    args = ["--model", str(path), "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
            "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads), "--n_ctx", str(n_ctx),
            "--n_gpu_layers", "0", "--logits_all", "false", "--interrupt_requests", "false"]
    with _server_process("llama_cpp.server", _LLAMA_LAUNCHER.format(extra=extra), args, port, n_threads,
                         startup_timeout, log_path) as url:
        yield url


@contextlib.contextmanager
def course_server(*, threads: int = 1, config: dict | None = None, port: int = 0, startup_timeout: float = 120.0,
                  log_path: str | Path | None = None) -> Iterator[str]:
    """The course server on the bundled model (float32) in its own process; yields the base URL.

    ``POST {url}/../bench/stats`` returns the engine's counters and resets its max batch (``engine_stats``).
    """
    port = port or _free_port()
    code = _COURSE_LAUNCHER.format(threads=threads, config=dict(config or {}), model=MODEL, port=port)
    with _server_process("the course server", code, [], port, threads, startup_timeout, log_path) as url:
        yield url


def engine_stats(url: str) -> dict:
    """The engine counters of a ``course_server`` (its max batch is reset for the next run)."""
    with urllib.request.urlopen(urllib.request.Request(url.removesuffix("/v1") + "/bench/stats", method="POST")) as r:
        return json.loads(r.read())
