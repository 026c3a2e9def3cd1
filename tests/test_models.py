"""Loading the bundled model and tiny models of every supported architecture through one path."""

import time

import pytest
import torch
from transformers import BertConfig

from course_lib.lm import models
from course_lib.lm.perplexity import FAST, perplexity
from course_lib.core.tables import fmt

ARCHS = ["llama", "qwen2", "mistral", "opt", "gpt2"]


@pytest.fixture(scope="module")
def bundled():
    return models.load_model(device="cpu")


def test_bundled_model_is_the_documented_llama(bundled):
    model, tok = bundled
    s = models.summarize(model)
    assert s.architecture == "LlamaForCausalLM" and s.parameters == 8_392_960
    assert (s.layers, s.hidden, s.heads, s.kv_heads, s.vocab, s.max_positions) == (8, 256, 4, 2, 4096, 512)
    assert s.kv_heads < s.heads  # grouped-query attention
    assert model.dtype == torch.float32 and not model.training
    assert len(tok) == 4096 and tok.eos_token == "<|endoftext|>"
    assert models.BUNDLED_DIR.joinpath("model.safetensors").stat().st_size < 20_000_000


def test_every_linear_layer_is_a_multiple_of_128(bundled):
    model, _ = bundled
    layers = models.linear_layers(model, skip=())
    assert len(layers) == 8 * 7 + 1  # q k v o gate up down per block, plus lm_head
    for name, m in layers.items():
        out_f, in_f = models.weight_matrix(m).shape
        assert out_f % 128 == 0 and in_f % 128 == 0, name


def test_recorded_perplexity_to_the_printed_digits(bundled):
    # The FAST protocol's number in data/course-model/README.md.
    result = perplexity(*bundled, FAST)
    assert result.tokens == 16320
    assert fmt(result.ppl) == "44.29"


def test_generation_is_deterministic_greedy(bundled):
    model, tok = bundled
    ids = tok("ROMEO:", return_tensors="pt").input_ids
    out1 = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    out2 = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(out1, out2) and out1.shape[1] == ids.shape[1] + 12


@pytest.mark.parametrize("arch", ARCHS)
def test_weight_matrix_is_out_by_in_for_every_architecture(arch):
    model = models.tiny_model(arch)
    layers = models.linear_layers(model)
    assert layers, f"no linear layers found in {arch}"
    x = torch.randn(3, 128)
    for name, m in layers.items():
        w = models.weight_matrix(m)
        if w.shape[1] != 128:
            x_in = torch.randn(3, w.shape[1])
        else:
            x_in = x
        expected = x_in @ w.T + (m.bias if m.bias is not None else 0)
        torch.testing.assert_close(m(x_in), expected, rtol=1e-5, atol=1e-5, msg=name)
    if arch == "gpt2":  # Conv1D stores (in, out): the view must transpose it
        c_fc = layers["transformer.h.0.mlp.c_fc"]
        assert c_fc.weight.shape == (128, 256) and models.weight_matrix(c_fc).shape == (256, 128)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_loading_path_for_every_architecture(arch, tmp_path):
    models.tiny_model(arch).save_pretrained(tmp_path)
    models.load_tokenizer().save_pretrained(tmp_path)
    model, tok = models.load_model(str(tmp_path), device="cpu")
    assert model.config.model_type == arch and tok.pad_token is not None
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 4096)


def test_course_model_setting_switches_the_model(tmp_path, monkeypatch):
    models.tiny_model("gpt2").save_pretrained(tmp_path)
    models.load_tokenizer().save_pretrained(tmp_path)
    monkeypatch.setenv("COURSE_MODEL", str(tmp_path))
    model, _ = models.load_model(device="cpu")
    assert model.config.model_type == "gpt2"


def test_hub_model_offline_fails_fast_and_names_the_setting(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(models.ModelUnavailableError, match="COURSE_MODEL") as err:
        models.load_model("some-org/not-a-cached-model")
    assert time.perf_counter() - start < 10
    assert "HF_HUB_OFFLINE" in str(err.value)


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False, raising=False)
    monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9", raising=False)
    start = time.perf_counter()
    with pytest.raises(models.ModelUnavailableError, match="COURSE_MODEL"):
        models.load_model("some-org/not-a-cached-model")
    assert time.perf_counter() - start < 10


def test_unsupported_architecture_and_missing_directory(tmp_path):
    BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(models.ModelUnavailableError, match="llama, qwen2, mistral, opt, gpt2"):
        models.load_model(str(tmp_path))
    with pytest.raises(models.ModelUnavailableError, match="No model directory"):
        models.load_model("./no/such/dir")
    with pytest.raises(ValueError, match="Unknown architecture"):
        models.tiny_model("bert")
