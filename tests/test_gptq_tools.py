"""course_lib.gptq.tools: GPTQModel and llm-compressor quantize the bundled model, transformers reloads it.

The slow tests quantize the bundled model once per library (16 x 128 calibration tokens, 4-bit,
groups of 128) and check the reloaded model: finite logits, FAST perplexity within 5% of the float
model's, and Linear layers that really are quantized (kernels, packed int tensors, config.json).
"""

import contextlib
import importlib.util
import io
import json
import math
import sys

import pytest
import torch

from course_lib.gptq import tools as gptq_tools
from course_lib.lm.models import BUNDLED_DIR
from course_lib.lm.perplexity import perplexity
from tool_fixtures import N_LAYERS, calibration, float_ppl, tokenizer, two_torch_threads  # noqa: F401


def _skip_unless_installed(*modules):
    """Skip without importing: gptqmodel prints its banner at import, which must happen in the tool."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e .[compress])")


def _quantize(fn, out_dir, calibration):
    """Run a tool and return (ToolRun, whatever reached stdout/stderr outside its capture)."""
    leaked = io.StringIO()
    with contextlib.redirect_stdout(leaked), contextlib.redirect_stderr(leaked):
        run = fn(BUNDLED_DIR, out_dir, calibration, bits=4, group_size=128)
    return run, leaked.getvalue()


@pytest.fixture(scope="module")
def gptqmodel_run(tmp_path_factory, calibration, monkeypatch_module):
    _skip_unless_installed("gptqmodel", "optimum")
    workdir = tmp_path_factory.mktemp("cwd")
    monkeypatch_module.chdir(workdir)  # GPTQModel itself would write ./logs/ here
    run = _quantize(gptq_tools.quantize_with_gptqmodel, tmp_path_factory.mktemp("gptqmodel"), calibration)
    assert not (workdir / "logs").exists()
    return run


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def llmc_run(tmp_path_factory, calibration):
    _skip_unless_installed("llmcompressor")
    return _quantize(gptq_tools.quantize_with_llmcompressor, tmp_path_factory.mktemp("llmc"), calibration)


def _check_reloaded(model, tokenizer, float_ppl):
    assert not model.training and model.dtype == torch.float32
    with torch.no_grad():
        logits = model(input_ids=torch.arange(1, 65)[None]).logits
    assert logits.shape == (1, 64, model.config.vocab_size) and torch.isfinite(logits).all()
    ppl = perplexity(model, tokenizer).ppl
    assert math.isfinite(ppl) and abs(ppl / float_ppl - 1) < 0.05, (ppl, float_ppl)


@pytest.mark.slow
def test_gptqmodel_quantizes_and_transformers_reloads(gptqmodel_run, tokenizer, float_ppl):
    run, leaked = gptqmodel_run
    assert leaked == "" and "INFO" in run.log  # its log lines and progress bars went to run.log
    assert run.library == "gptqmodel" and run.version and run.seconds > 0
    assert run.settings["bits"] == 4 and run.settings["n_samples"] == 16 and run.settings["desc_act"] is False
    config = json.loads((run.out_dir / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["bits"], config["group_size"], config["desc_act"]) == ("gptq", 4, 128, False)
    summary = gptq_tools.checkpoint_summary(run.out_dir)
    assert summary["tensors"]["qweight"] == {"I32": N_LAYERS} and summary["tensors"]["g_idx"] == {"I32": N_LAYERS}
    assert gptq_tools.dir_size_bytes(run.out_dir) < 0.6 * gptq_tools.dir_size_bytes(BUNDLED_DIR)
    generation = json.loads((run.out_dir / "generation_config.json").read_text())
    assert "do_sample" not in generation  # the original's (GPTQModel itself writes do_sample=true)

    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    model = gptq_tools.load_quantized(run.out_dir)
    kernels = [m for m in model.modules() if isinstance(m, BaseQuantLinear)]
    assert len(kernels) == N_LAYERS and all(k.qweight.dtype == torch.int32 for k in kernels)
    assert type(model.lm_head) is torch.nn.Linear
    _check_reloaded(model, tokenizer, float_ppl)
    row = gptq_tools.score_run(run, tokenizer, "GPTQModel")
    assert row["quantized by"] == f"GPTQModel {run.version}" and row["format"] == "gptq / gptq"
    assert row["perplexity"] == pytest.approx(perplexity(model, tokenizer).ppl) and row["seconds"] == run.seconds
    assert row["weights bytes"] == (run.out_dir / "model.safetensors").stat().st_size


@pytest.mark.slow
def test_llmcompressor_quantizes_and_transformers_reloads(llmc_run, tokenizer, float_ppl):
    run, leaked = llmc_run
    assert leaked == ""
    assert run.library == "llmcompressor" and run.settings["actorder"] is None
    summary = gptq_tools.checkpoint_summary(run.out_dir)
    assert (summary["method"], summary["format"], summary["bits"], summary["group_size"], summary["sym"]) == \
        ("compressed-tensors", "pack-quantized", 4, 128, True)
    assert summary["tensors"]["weight_packed"] == {"I32": N_LAYERS} and "weight_scale" in summary["tensors"]
    assert gptq_tools.dir_size_bytes(run.out_dir) < 0.6 * gptq_tools.dir_size_bytes(BUNDLED_DIR)

    model = gptq_tools.load_quantized(run.out_dir)
    layers = [m for m in model.modules() if getattr(m, "quantization_scheme", None) is not None]
    assert len(layers) == N_LAYERS and not hasattr(model.lm_head, "quantization_scheme")
    for layer in layers:  # dequantized at load: w / scale is an integer in [-8, 7] in every group of 128
        w = layer.weight.detach().reshape(layer.out_features, -1, 128)
        q = w / layer.weight_scale.detach()[:, :, None]
        assert torch.allclose(q, q.round(), atol=1e-3) and q.min() >= -8.001 and q.max() <= 7.001
    _check_reloaded(model, tokenizer, float_ppl)


@pytest.mark.parametrize("bad", [dict(bits=5), dict(bits=16), dict(bits=True), dict(group_size=0),
                                 dict(group_size=-2), dict(group_size=64.0)])
@pytest.mark.parametrize("fn", [gptq_tools.quantize_with_gptqmodel, gptq_tools.quantize_with_llmcompressor])
def test_unsupported_settings_raise_value_error(fn, bad, tmp_path):
    calibration = torch.zeros(2, 16, dtype=torch.long)
    with pytest.raises(ValueError, match="bits must be one of|group_size must be"):
        fn(BUNDLED_DIR, tmp_path / "out", calibration, **bad)


def test_bad_arguments(tmp_path):
    good = torch.zeros(2, 16, dtype=torch.long)
    with pytest.raises(TypeError, match="calibration_batches"):
        gptq_tools.quantize_with_gptqmodel(BUNDLED_DIR, tmp_path / "a", [[1, 2, 3]])
    with pytest.raises(ValueError, match=r"2-D \(n_samples, seq_len\)"):
        gptq_tools.quantize_with_llmcompressor(BUNDLED_DIR, tmp_path / "a", torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="removed actorder='group'"):
        gptq_tools.quantize_with_llmcompressor(BUNDLED_DIR, tmp_path / "a", good, actorder="group")
    with pytest.raises(ValueError, match="actorder must be one of"):
        gptq_tools.quantize_with_llmcompressor(BUNDLED_DIR, tmp_path / "a", good, actorder="desc")
    with pytest.raises(ValueError, match="at most one"):
        gptq_tools.quantize_with_gptqmodel(BUNDLED_DIR, tmp_path / "a", good, desc_act=True, act_group_aware=True)
    with pytest.raises(ValueError, match="damp_percent"):
        gptq_tools.quantize_with_gptqmodel(BUNDLED_DIR, tmp_path / "a", good, damp_percent=0)
    with pytest.raises(ValueError, match="no config.json"):
        gptq_tools.quantize_with_gptqmodel(tmp_path, tmp_path / "a", good)
    with pytest.raises(ValueError, match="must differ"):
        gptq_tools.quantize_with_llmcompressor(BUNDLED_DIR, BUNDLED_DIR, good)
    with pytest.raises(ValueError, match="not a quantized checkpoint"):
        gptq_tools.load_quantized(BUNDLED_DIR)
    with pytest.raises(ValueError, match="no saved model"):
        gptq_tools.checkpoint_summary(tmp_path)


@pytest.mark.parametrize("module, fn", [("gptqmodel", gptq_tools.quantize_with_gptqmodel),
                                        ("llmcompressor", gptq_tools.quantize_with_llmcompressor)])
def test_missing_library_names_the_extra(module, fn, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r"pip install -e \.\[compress\]"):
        fn(BUNDLED_DIR, tmp_path / "out", torch.zeros(2, 16, dtype=torch.long))


def test_quiet_restores_logging_and_stdout():
    import logging

    logger = logging.getLogger("transformers")
    before = logger.level
    logger.setLevel(logging.INFO)
    stdout = sys.stdout
    try:
        with gptq_tools._quiet() as log:
            print("hidden")
            assert logger.level == logging.ERROR
        assert sys.stdout is stdout and log.getvalue() == "hidden\n"
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(before)


def test_autogptq_evidence_is_recorded():
    rows = gptq_tools.describe_autogptq_status()
    assert len(rows) >= 6 and all(set(r) == {"topic", "finding", "command", "checked"} for r in rows)
    assert all(r["checked"] == "2026-11-21" and r["command"] for r in rows)
    text = " ".join(r["finding"] for r in rows)
    for evidence in ("0.7.1", "cannot import name 'no_init_weights'", "requires CUDA available", "GPTQModel"):
        assert evidence in text
    rows[0]["finding"] = "changed"  # callers get copies
    assert gptq_tools.describe_autogptq_status()[0]["finding"] != "changed"
