"""llama.cpp itself on the course's GGUF files, through its Python binding ``llama-cpp-python``.

    quantize("course-F16.gguf", "course-Q4_K_M.gguf", "Q4_K_M")   # llama.cpp's own quantizer (k-quants too)
    llm = load("course-Q4_K_M.gguf")                               # a llama_cpp.Llama, logits for every token
    perplexity(llm, tokenizer)                                     # the course protocol, from llama.cpp's logits
    tensor_types("course-Q4_K_M.gguf")                             # {"attn_v.weight": {"Q4_K": 4, "Q6_K": 4}, ...}

The binding is source-only on the package index: pip compiles llama.cpp with CMake, about 17 minutes on 2 cores.
So it is not part of the course's setup; ``make llama-cpp`` installs it (pinned in constraints.txt).

What this module measures against transformers on the same file:

* the tokenizer: llama.cpp's BPE (from the GGUF's token list, merges and pre-tokenizer) against the
  ``tokenizers`` file, token for token, without a BOS token (the course's tokenizers add none);
* the logits: perplexity over exactly the windows and scored tokens of ``course_lib.lm.perplexity``,
  ``exp(mean(-log softmax(logits)[next token]))``, and greedy decoding (argmax at each step, no stop token);
* the quantizer: llama.cpp's ``Q4_K_M`` is a *mix*, not one type: some ``attn_v`` and ``ffn_down`` tensors
  (the first and last eighth of the layers and every third one between) and the output head get Q6_K.
  A k-quant needs rows whose length is a multiple of 256; other tensors fall back to a 32-block type;
* the arithmetic: with quantized weights llama.cpp also rounds the activations to 8 bits (Q8_0/Q8_K blocks) for
  its integer dot products, where transformers de-quantizes the weights and multiplies in float32. On SmolLM2,
  whose activations have outliers, that alone costs about 0.5% perplexity at Q8_0 (data/results/cpu_gguf.json).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import math
import re
import statistics
import sys
import time
import weakref
from collections import Counter, defaultdict, deque
from pathlib import Path

import numpy as np

from ..core.optional import missing
from ..lm.perplexity import FAST, Protocol, Result, windows

PIN = "llama-cpp-python==0.3.36"
BUILD_HINT = (f"llama-cpp-python is not installed: it is source-only on the package index, so pip compiles "
              f"llama.cpp (about 17 minutes of build on 2 cores). Run `make llama-cpp` (pip install -c "
              f"constraints.txt {PIN}) to build it once into the course's .venv.")
# llama.cpp's quantizer: the file types it writes from an F16/F32 GGUF (llama_ftype, LLAMA_FTYPE_MOSTLY_<kind>)
QUANTIZER_KINDS = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_S",
                   "Q5_K_M", "Q6_K")


# ggml's log levels (ggml.h): the binding's own table predates DEBUG = 1, so it shows warnings as errors
_LEVELS = {0: "none", 1: "debug", 2: "info", 3: "warn", 4: "error"}
LOG: deque[str] = deque(maxlen=2000)   # llama.cpp's recent log lines, "level: text", for a look after the fact
_callback = None                        # the ctypes callback, kept alive for as long as llama.cpp may call it
_last_level = 2


def _log(level: int, text: bytes, _user_data) -> None:
    """llama.cpp's log into LOG; only errors reach stderr (a notebook shows stderr)."""
    global _last_level
    level = _last_level if level == 5 else level  # 5: the previous message continues
    _last_level = level
    line = text.decode("utf-8", errors="replace")
    LOG.append(f"{_LEVELS.get(level, level)}: {line.rstrip()}")
    if level == 4:
        sys.stderr.write(line)


def require():
    """The ``llama_cpp`` module, its C log routed to LOG, or an ImportError that says how to build it."""
    global _callback
    if missing("llama_cpp"):
        raise ImportError(BUILD_HINT)
    import llama_cpp

    if _callback is None:
        _callback = llama_cpp.llama_log_callback(_log)
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))  # llama.cpp's and ggml's log, loading included
    return llama_cpp


def quantize(src_gguf, out_gguf, kind: str, *, threads: int | None = None) -> Path:
    """llama.cpp's quantizer (``llama_model_quantize``): an F16/F32 GGUF -> `kind` (``Q4_K_M``, ``Q6_K``, ...)."""
    llama_cpp = require()
    if kind not in QUANTIZER_KINDS:
        raise ValueError(f"Unknown llama.cpp file type {kind!r}; known here: {', '.join(QUANTIZER_KINDS)}.")
    src, out = Path(src_gguf), Path(out_gguf)
    if not src.is_file():
        raise FileNotFoundError(f"No GGUF file at {src}; write one with course_lib.mixed.gguf_io.write_gguf.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = threads or 0  # 0: all hardware threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src.name} to {kind} (return code {rc}).")
    return out


def _close_at_exit(ref: weakref.ref) -> None:
    llm = ref()
    if llm is not None:
        llm.close()


def cpu_has_amx() -> bool:
    """Whether this CPU advertises Intel AMX tiles (Linux: /proc/cpuinfo flags)."""
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def _model_params(**fields):
    """llama_cpp.Llama exposes only some of llama.cpp's model parameters: set others for one load."""
    from llama_cpp import llama_cpp as capi

    default = capi.llama_model_default_params

    def params():
        p = default()
        for name, value in fields.items():
            setattr(p, name, value)
        return p

    capi.llama_model_default_params = params
    try:
        yield
    finally:
        capi.llama_model_default_params = default


def load(path, *, n_ctx: int = 512, n_threads: int | None = None, logits_all: bool = True,
         extra_buffers: bool | None = None):
    """A quiet ``llama_cpp.Llama`` on the CPU that keeps the logits of every evaluated token (``llm.scores``).

    n_threads:     llama.cpp's threads (default: half the hardware threads). Its threads spin at barriers,
                   so on a busy 2-core machine 1 thread is much faster than 2.
    extra_buffers: ggml's repacked and AMX weight layouts. Default: off on a CPU with AMX tiles (ggml's AMX
                   matmul crashed with SIGSEGV at ``ldtilecfg`` on the course's CPU machine, a KVM guest, for
                   every quantized type from 2 tokens up); on elsewhere.
    """
    llama_cpp = require()
    if not Path(path).is_file():
        raise FileNotFoundError(f"No GGUF file at {path}.")
    extra = not cpu_has_amx() if extra_buffers is None else extra_buffers
    with _model_params(use_extra_bufts=extra):
        llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=n_threads,
                              n_threads_batch=n_threads, logits_all=logits_all, n_gpu_layers=0, seed=0,
                              verbose=False)
    atexit.register(_close_at_exit, weakref.ref(llm))  # freed before the interpreter tears the binding down
    return llm


# --- the tokenizer --------------------------------------------------------------------------------------------

def token_ids(llm, text: str) -> list[int]:
    """llama.cpp's token ids of `text`: no BOS added, special tokens (``<|endoftext|>``) parsed as transformers does."""
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def compare_tokens(llm, tokenizer, texts) -> dict:
    """llama.cpp's token ids against transformers' on each text: how many texts and tokens agree."""
    same, tokens, first = 0, 0, None
    for text in texts:
        ours, theirs = token_ids(llm, text), tokenizer(text)["input_ids"]
        tokens += len(theirs)
        if ours == theirs:
            same += 1
        elif first is None:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            first = {"text": text[:80], "position": at, "llama_cpp": ours[at:at + 5], "transformers": theirs[at:at + 5]}
    return {"match": same == len(texts), "texts": len(texts), "texts_matching": same, "tokens": tokens,
            "first_mismatch": first}


# --- logits: perplexity and greedy decoding -------------------------------------------------------------------

def _fits(llm, n_tokens: int) -> None:
    if n_tokens > llm.n_ctx():
        raise ValueError(f"{n_tokens} tokens do not fit the context of {llm.n_ctx()}; load(path, n_ctx=...).")


def logits(llm, ids) -> np.ndarray:
    """(len(ids), vocab) float32 logits of a fresh sequence: the KV cache is cleared first."""
    ids = [int(i) for i in ids]
    _fits(llm, len(ids))
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def perplexity(llm, tokenizer=None, protocol: Protocol = FAST, *, stream=None) -> Result:
    """The course's perplexity (same token stream, windows and scored tokens as course_lib.lm.perplexity),
    scored from llama.cpp's logits; `stream` (1-D token ids) overrides the split's tokens."""
    if stream is None:
        from ..lm.tokens import token_stream

        stream = token_stream(protocol.split, tokenizer)
    ids = np.asarray(stream, dtype=np.int64)
    if protocol.max_tokens is not None:
        ids = ids[: protocol.max_tokens]
    total, count = 0.0, 0
    for begin, end, first in windows(len(ids), protocol.seq_len, protocol.stride):
        x = ids[begin:end]
        z = logits(llm, x)[:-1].astype(np.float64)            # z[t] predicts token t + 1
        m = z.max(axis=1, keepdims=True)
        logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))   # log softmax
        nll = -logp[np.arange(len(x) - 1), x[1:]]
        scored = nll[max(first, begin + 1) - begin - 1:]      # each token scored once, as the course does
        total += float(scored.sum())
        count += scored.size
    nll = total / count
    return Result(ppl=math.exp(nll), nll=nll, tokens=count, protocol=protocol)


def greedy(llm, prompt_ids, n: int) -> list[int]:
    """`n` tokens by argmax, one at a time through llama.cpp's KV cache (no stop token)."""
    prompt = [int(i) for i in prompt_ids]
    _fits(llm, len(prompt) + n)
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def hf_greedy(model, prompt_ids, n: int) -> list[int]:
    """The same greedy decoding with a transformers model: argmax of the last position, `n` times, no stop token."""
    import torch

    ids = torch.as_tensor([list(prompt_ids)], dtype=torch.long, device=next(model.parameters()).device)
    out: list[int] = []
    past = None
    with torch.no_grad():
        for _ in range(n):
            result = model(input_ids=ids, past_key_values=past, use_cache=True)
            past, nxt = result.past_key_values, int(result.logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.tensor([[nxt]], device=ids.device)
    return out


def compare_greedy(llm, model, prompt_ids, n: int = 16) -> dict:
    """Greedy ids of llama.cpp and of transformers from the same prompt: equal, and how long the common prefix is."""
    a, b = greedy(llm, prompt_ids, n), hf_greedy(model, prompt_ids, n)
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), n)
    return {"match": a == b, "common_prefix": prefix, "n": n, "llama_cpp": a, "transformers": b}


def tokens_per_second(llm, prompt_ids, n: int = 64, *, repeats: int = 5, warmup: int = 1) -> dict:
    """Generation speed on this CPU: the prompt evaluated, then `n` greedy tokens timed; median of `repeats` runs
    after `warmup` untimed ones."""
    prompt = [int(i) for i in prompt_ids]
    _fits(llm, len(prompt) + n)
    times = []
    for run in range(warmup + repeats):
        llm.reset()
        llm.eval(prompt)
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        start = time.perf_counter()
        for _ in range(n):
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if run >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"tokens_per_s": n / median, "n": n, "repeats": repeats, "spread": (max(times) - min(times)) / median}


# --- what a GGUF file holds -----------------------------------------------------------------------------------

def tensor_pattern(name: str) -> str:
    """A tensor's name without its layer number: ``blk.3.attn_v.weight`` -> ``attn_v.weight``."""
    return re.sub(r"^blk\.\d+\.", "", name)


def tensor_types(path) -> dict[str, dict[str, int]]:
    """{name pattern: {GGML type: how many tensors}} of a GGUF file (gguf.GGUFReader maps it, reads the index)."""
    import gguf

    out: dict[str, Counter] = defaultdict(Counter)
    for t in gguf.GGUFReader(str(path)).tensors:
        out[tensor_pattern(t.name)][t.tensor_type.name] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


def tensor_type_of(path) -> dict[str, str]:
    """{tensor name: GGML type name} of a GGUF file."""
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def bits_per_weight(path) -> float:
    """Stored bits per weight over the file's 2-D tensors (every scale and minimum counted; norms left out)."""
    import gguf

    bits = weights = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        if len(t.shape) == 2:
            bits += 8 * int(t.n_bytes)
            weights += int(t.n_elements)
    if not weights:
        raise ValueError(f"{path} holds no 2-D tensors.")
    return bits / weights
