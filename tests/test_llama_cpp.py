"""llama.cpp itself (llama-cpp-python) on the course's GGUF files: its quantizer's Q4_K_M mix, bits per weight from
the file, its tokenizer, greedy ids and perplexity against transformers on the bundled model.

Skipped where llama-cpp-python is not installed: it is a 17-minute source build, not part of `make setup`."""

from __future__ import annotations

import sys

import pytest
import torch

from course_lib.core.env import REPO_ROOT
from course_lib.lm.perplexity import Protocol, perplexity
from course_lib.mixed import gguf_io, kquants
from course_lib.mixed import llama_cpp as lc

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llama-cpp builds it, ~17 min)")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOKENIZER = REPO_ROOT / "data" / "course-model" / "tokenizer.json"
SHORT = Protocol(max_tokens=4096)   # 16 windows of 256: a few seconds in each reader
PROMPT = "To be, or not to be, that is the question"


@pytest.fixture(scope="module")
def bundled():
    from course_lib.lm.models import load_model

    return load_model(dtype=torch.float32)


@pytest.fixture(scope="module")
def files(bundled, tmp_path_factory):
    """F16, Q8_0 and Q4_0 written by gguf_io; Q4_K_M and Q6_K by llama.cpp's quantizer from the F16 file."""
    folder = tmp_path_factory.mktemp("gguf")
    out = {kind: gguf_io.write_gguf(bundled[0], folder / f"course-{kind}.gguf", kind, tokenizer_json=TOKENIZER)
           for kind in ("F16", "Q8_0", "Q4_0")}
    for kind in ("Q4_K_M", "Q6_K"):
        out[kind] = lc.quantize(out["F16"], folder / f"course-{kind}.gguf", kind, threads=1)
    return out


@pytest.fixture(scope="module")
def f16(files):
    llm = lc.load(files["F16"], n_ctx=256, n_threads=1)
    yield llm
    llm.close()


def test_q4_k_m_is_a_mix_with_q6_k_for_some_attn_v_and_ffn_down(files):
    types = lc.tensor_types(files["Q4_K_M"])
    assert set().union(*types.values()) == {"Q4_K", "Q6_K", "F32"}
    for pattern in ("attn_v.weight", "ffn_down.weight"):   # some layers get more bits, the rest Q4_K
        assert types[pattern].get("Q6_K", 0) >= 2 and types[pattern].get("Q4_K", 0) >= 2, (pattern, types[pattern])
    assert types["attn_q.weight"] == {"Q4_K": 8}
    assert types["output.weight"] == {"Q6_K": 1}
    assert lc.tensor_type_of(files["Q4_K_M"])["blk.0.attn_v.weight"] == "Q6_K"   # the first layers: more bits


def test_bits_per_weight_from_the_file_matches_the_block_layouts(files):
    for kind in ("Q8_0", "Q4_0", "Q6_K"):
        assert lc.bits_per_weight(files[kind]) == pytest.approx(kquants.bits_per_weight(kind), abs=0.02), kind
    mix = lc.bits_per_weight(files["Q4_K_M"])
    assert kquants.bits_per_weight("Q4_K") < mix < kquants.bits_per_weight("Q6_K")
    assert lc.bits_per_weight(files["F16"]) == 16.0


def test_token_ids_match_transformers(f16, bundled):
    from course_lib.lm.corpus import list_documents

    tok = bundled[1]
    texts = [text[:20000] for _, text in list_documents("test")] + [
        "In 1865, 3.14159 x 42 = 131.9; naïve café, “quotes” — 🙂",
        "  two spaces,\ttabs\n\n\nand blank lines  ",
        "<|endoftext|>special tokens in the text<|endoftext|>", PROMPT]
    result = lc.compare_tokens(f16, tok, texts)
    assert result["match"], result["first_mismatch"]
    assert result["tokens"] > 10000
    assert lc.token_ids(f16, "<|endoftext|>") == [tok.eos_token_id]   # one special token, as in transformers
    assert lc.token_ids(f16, PROMPT) == tok(PROMPT)["input_ids"]        # no BOS in front (the course adds none)


def test_greedy_ids_of_the_f16_file_match_the_float_model(f16, bundled):
    model, tok = bundled
    result = lc.compare_greedy(f16, model, tok(PROMPT)["input_ids"], 16)
    assert result["match"], result


def test_perplexity_of_the_f16_file_matches_transformers(f16, bundled):
    model, tok = bundled
    ours, theirs = lc.perplexity(f16, tok, SHORT), perplexity(model, tok, SHORT)
    assert ours.tokens == theirs.tokens                    # the same windows and scored tokens
    assert ours.ppl == pytest.approx(theirs.ppl, rel=5e-3)


def test_q4_k_m_costs_a_little_perplexity(files, f16, bundled):
    from course_lib.lm.perplexity import FAST
    from course_lib.lm.tokens import token_stream

    tok = bundled[1]
    window = token_stream("test", tok)[:256]
    reference = lc.logits(f16, window)
    errors = {}
    for kind in ("Q6_K", "Q4_K_M"):
        llm = lc.load(files[kind], n_ctx=256, n_threads=1)
        try:
            errors[kind] = abs(lc.logits(llm, window) - reference).mean()
            if kind == "Q4_K_M":
                q4 = lc.perplexity(llm, tok, FAST).ppl   # on 4096 tokens Q4_K_M happens to score below F16
                speed = lc.tokens_per_second(llm, tok(PROMPT)["input_ids"], 8, repeats=2)
        finally:
            llm.close()
    assert errors["Q6_K"] < errors["Q4_K_M"]               # fewer bits, logits further from F16's
    base = lc.perplexity(f16, tok, FAST).ppl
    assert base < q4 < 1.03 * base                         # recorded: 44.29 -> 44.46 (+0.4%)
    assert speed["tokens_per_s"] > 0


def test_context_and_kind_errors(files, f16):
    with pytest.raises(ValueError, match="do not fit the context"):
        lc.logits(f16, list(range(300)))
    with pytest.raises(ValueError, match="Unknown llama.cpp file type"):
        lc.quantize(files["F16"], files["F16"].with_name("x.gguf"), "Q4_K")


def test_missing_library_names_the_make_target(monkeypatch, files):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)   # import llama_cpp now fails, as when not installed
    with pytest.raises(ImportError, match="make llama-cpp") as info:
        lc.require()
    assert "17 minutes" in str(info.value)
    with pytest.raises(ImportError, match="make llama-cpp"):
        lc.load(files["F16"])
