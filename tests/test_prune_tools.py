"""course_lib.prune.tools: llm-compressor's SparseGPT and Wanda prune the bundled model's decoder blocks.

Each run prunes the bundled model once with 8 x 64 calibration tokens (about 1-4 s on one thread).
Tolerance for unstructured SparseGPT: llm-compressor prunes every weight whose saliency is <= the
k-th smallest of its block of 128 columns (k = int(0.5 * rows * 128)), i.e. k + 1 per block, and a
few more on ties or weights that were already 0; that is a few 1e-5 above 0.5 for the course
model's layers, so [0.5, 0.501] is asserted. Wanda prunes exactly int(0.5 * in_features) per row.
"""

import contextlib
import io
import sys

import pytest
import torch

pytest.importorskip("llmcompressor", reason="llm-compressor is not installed (pip install -e .[compress])")

from course_lib.lm.models import BUNDLED_DIR, load_tokenizer  # noqa: E402
from course_lib.prune.tools import prune_with_llmcompressor, sparsity_report  # noqa: E402
from course_lib.lm.tokens import calibration_batches  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N_TARGETED = 8 * 7  # 8 decoder layers x (q, k, v, o, gate, up, down)


@pytest.fixture(scope="module")
def calibration():
    return calibration_batches(load_tokenizer(), 8, 64)


@pytest.fixture(scope="module")
def dense_lm_head():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(BUNDLED_DIR), dtype=torch.float32).lm_head.weight.detach().clone()


def _prune(calibration, **kwargs):
    """Run the tool; return (model, run, whatever leaked to stdout/stderr outside its capture)."""
    leaked = io.StringIO()
    with contextlib.redirect_stdout(leaked), contextlib.redirect_stderr(leaked):
        model, run = prune_with_llmcompressor(BUNDLED_DIR, calibration, **kwargs)
    return model, run, leaked.getvalue()


def _split(rows):
    targeted = [r for r in rows if ".layers." in r["layer"]]
    (head,) = [r for r in rows if r["layer"] == "lm_head"]
    assert len(targeted) == N_TARGETED
    return targeted, head


def test_sparsegpt_unstructured_half_of_every_layer(calibration, dense_lm_head):
    model, run, leaked = _prune(calibration, method="sparsegpt", sparsity=0.5)
    assert leaked == "" and isinstance(run.log, str)  # whatever the library printed went to run.log, not out
    assert run.library == "llmcompressor" and run.version and run.seconds > 0 and run.out_dir is None
    assert run.settings["targets"] == ["LlamaDecoderLayer"] and run.settings["n_samples"] == 8
    targeted, head = _split(sparsity_report(model))
    assert all(0.5 <= r["zeros"] <= 0.501 for r in targeted), [r["zeros"] for r in targeted]
    assert head["zeros"] == 0 and torch.equal(model.lm_head.weight.cpu(), dense_lm_head)  # lm_head untouched
    assert not model.training and model.dtype == torch.float32


def test_sparsegpt_2_4_exact_pattern(calibration, dense_lm_head):
    model, run, _ = _prune(calibration, method="sparsegpt", sparsity=0.5, mask_structure="2:4")
    targeted, head = _split(sparsity_report(model))
    assert all(r["2:4"] and r["zeros"] == 0.5 for r in targeted)
    assert not head["2:4"] and torch.equal(model.lm_head.weight.cpu(), dense_lm_head)
    with torch.no_grad():
        logits = model(input_ids=calibration[:1].to(model.device)).logits  # the library returns it on the GPU when there is one
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("mask_structure, n, m", [("0:0", 2, 4), ("2:4", 2, 4), ("4:8", 4, 8)])
def test_wanda(calibration, dense_lm_head, mask_structure, n, m):
    model, run, leaked = _prune(calibration, method="wanda", sparsity=0.5, mask_structure=mask_structure)
    assert leaked == "" and "block_size" not in run.settings
    targeted, head = _split(sparsity_report(model, n=n, m=m))
    assert all(r["zeros"] == 0.5 for r in targeted)  # int(in_features / 2) per row, exactly
    assert all(r[f"{n}:{m}"] for r in targeted) == (mask_structure != "0:0")
    assert torch.equal(model.lm_head.weight.cpu(), dense_lm_head)


def test_saves_when_asked(calibration, tmp_path):
    model, run, _ = _prune(calibration[:2], method="wanda", out_dir=tmp_path / "out")
    assert run.out_dir == tmp_path / "out"
    assert (run.out_dir / "config.json").exists() and (run.out_dir / "model.safetensors").exists()
    assert (run.out_dir / "tokenizer.json").exists() or (run.out_dir / "tokenizer_config.json").exists()


def test_sparsity_report_on_a_hand_made_layer():
    layer = torch.nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0, 1, 0, 1, 1, 0, 0, 1], [0, 0, 1, 1, 1, 1, 1, 0.0]]))
    (row,) = sparsity_report(torch.nn.Sequential(layer))
    assert row == {"layer": "0", "shape": "2x8", "zeros": 7 / 16, "2:4": False}  # row 2, group 2 has one zero
    with torch.no_grad():
        layer.weight[1, 4] = 0
    assert sparsity_report(torch.nn.Sequential(layer))[0]["2:4"] is True
    with pytest.raises(ValueError, match="n <= m"):
        sparsity_report(layer, n=3, m=2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=1.0), r"\[0, 1\)"),
    (dict(sparsity=-0.1), r"\[0, 1\)"),
    (dict(method="magnitude"), "method must be one of"),
    (dict(mask_structure="1:4"), "mask_structure must be one of"),
    (dict(mask_structure="2:4", sparsity=0.7), "pass sparsity=0.5"),
    (dict(mask_structure="2:4", block_size=130), "multiple of M=4"),
    (dict(dampening_frac=0.0), "dampening_frac"),
])
def test_bad_settings(calibration, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prune_with_llmcompressor(BUNDLED_DIR, calibration, **kwargs)


def test_bad_model_dir_and_calibration(calibration, tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        prune_with_llmcompressor(tmp_path, calibration)
    with pytest.raises(TypeError, match="LongTensor"):
        prune_with_llmcompressor(BUNDLED_DIR, calibration.tolist())
    with pytest.raises(ValueError, match="2-D"):
        prune_with_llmcompressor(BUNDLED_DIR, calibration[0])


def test_nm_that_does_not_divide_in_features(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=130, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj has in_features=130"):
        prune_with_llmcompressor(tmp_path, torch.randint(0, 64, (2, 16)), mask_structure="2:4")


def test_missing_library_points_to_the_extra(calibration, monkeypatch):
    monkeypatch.setitem(sys.modules, "llmcompressor", None)  # makes `import llmcompressor` fail
    with pytest.raises(ImportError, match=r"pip install -e \.\[compress\]"):
        prune_with_llmcompressor(BUNDLED_DIR, calibration)
