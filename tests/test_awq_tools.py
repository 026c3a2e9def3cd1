"""course_lib.awq.tools: GPTQModel and llm-compressor run AWQ (and SmoothQuant W8A8) on the bundled model.

The slow tests quantize the bundled model once per tool (16 x 128 calibration tokens; 4-bit groups
of 128 with a zero point for AWQ) and check the checkpoint, then the model transformers reloads:
finite logits, greedy generation, FAST perplexity close to the float model's, and layers that
really are quantized (kernels, packed int tensors, int grids, per-token int8 activations).
"""

import contextlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from course_lib.awq import tools as awq_tools

from course_lib.gptq import tools as gptq_tools
from course_lib.lm.models import BUNDLED_DIR, load_model
from course_lib.lm.perplexity import perplexity
from tool_fixtures import N_LAYERS, calibration, float_ppl, tokenizer, two_torch_threads  # noqa: F401


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _skip_unless_installed(*modules):
    """Skip without importing: gptqmodel prints its banner at import, which must happen in the tool."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e .[compress])")


def _quantize(fn, out_dir, calibration, **kwargs):
    """Run a tool and return (ToolRun, whatever reached stdout/stderr outside its capture)."""
    leaked = io.StringIO()
    with contextlib.redirect_stdout(leaked), contextlib.redirect_stderr(leaked):
        run = fn(BUNDLED_DIR, out_dir, calibration, **kwargs)
    return run, leaked.getvalue()


@pytest.fixture(scope="module")
def gptqmodel_run(tmp_path_factory, calibration, monkeypatch_module):
    _skip_unless_installed("gptqmodel")
    workdir = tmp_path_factory.mktemp("cwd")
    monkeypatch_module.chdir(workdir)  # GPTQModel itself would write ./logs/ here
    run = _quantize(awq_tools.quantize_awq_with_gptqmodel, tmp_path_factory.mktemp("gm_awq"), calibration)
    assert not (workdir / "logs").exists()
    return run


@pytest.fixture(scope="module")
def llmc_run(tmp_path_factory, calibration):
    _skip_unless_installed("llmcompressor")
    return _quantize(awq_tools.quantize_awq_with_llmcompressor, tmp_path_factory.mktemp("llmc_awq"), calibration)


@pytest.fixture(scope="module")
def smoothquant_run(tmp_path_factory, calibration):
    _skip_unless_installed("llmcompressor")
    return _quantize(awq_tools.smoothquant_w8a8_with_llmcompressor, tmp_path_factory.mktemp("sq"), calibration)


def _check_reloaded(model, tokenizer, float_ppl, tolerance):
    """float32 eval model, finite logits, greedy generation, FAST perplexity within `tolerance` of float's."""
    assert not model.training and model.dtype == torch.float32
    with torch.no_grad():
        logits = model(input_ids=torch.arange(1, 65)[None]).logits
    assert logits.shape == (1, 64, model.config.vocab_size) and torch.isfinite(logits).all()
    prompt = tokenizer("The king", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 8) and tokenizer.decode(out[0, -8:]).strip()
    ppl = perplexity(model, tokenizer).ppl
    assert math.isfinite(ppl) and abs(ppl / float_ppl - 1) < tolerance, (ppl, float_ppl)
    return ppl


@pytest.mark.slow
def test_gptqmodel_awq_quantizes_and_transformers_reloads(gptqmodel_run, tokenizer, float_ppl):
    run, leaked = gptqmodel_run
    assert leaked == "" and "INFO" in run.log  # its log lines and progress bars went to run.log
    assert run.library == "gptqmodel" and run.version and run.seconds > 0
    assert run.settings["dtype"] == "bfloat16" and run.settings["sym"] is False and run.settings["n_samples"] == 16
    summary = gptq_tools.checkpoint_summary(run.out_dir)
    assert (summary["method"], summary["format"], summary["bits"], summary["group_size"], summary["sym"]) == \
        ("awq", "gemm", 4, 128, False)
    tensors = summary["tensors"]
    assert tensors["qweight"] == {"I32": N_LAYERS} and tensors["qzeros"] == {"I32": N_LAYERS}
    assert sum(tensors["scales"].values()) == N_LAYERS and "g_idx" not in tensors
    assert gptq_tools.dir_size_bytes(run.out_dir) < 0.6 * gptq_tools.dir_size_bytes(BUNDLED_DIR)
    generation = json.loads((run.out_dir / "generation_config.json").read_text())
    assert "do_sample" not in generation  # the original's (GPTQModel itself writes do_sample=true)

    from gptqmodel.nn_modules.qlinear import AWQuantLinear

    model = gptq_tools.load_quantized(run.out_dir)
    kernels = [m for m in model.modules() if isinstance(m, AWQuantLinear)]
    assert len(kernels) == N_LAYERS and all(k.qweight.dtype == torch.int32 for k in kernels)
    assert type(model.lm_head) is torch.nn.Linear
    # 4-bit AWQ: about RTN's 44.99 or better; the float32 aliasing bug gave 48.25 (+9%)
    _check_reloaded(model, tokenizer, float_ppl, tolerance=0.03)

    torch_kernel = gptq_tools.load_quantized(run.out_dir, backend="torch_awq")  # another kernel, same weights
    assert {type(m).__name__ for m in torch_kernel.modules() if isinstance(m, AWQuantLinear)} == {"AwqTorchLinear"}
    with torch.no_grad():
        ids = torch.arange(1, 33)[None]
        a, b = model(input_ids=ids).logits, torch_kernel(input_ids=ids).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # float16 vs int4-kernel arithmetic


@pytest.mark.slow
def test_llmcompressor_awq_quantizes_and_transformers_reloads(llmc_run, tokenizer, float_ppl):
    run, leaked = llmc_run
    assert leaked == ""
    assert run.library == "llmcompressor" and run.settings["duo_scaling"] is True and run.settings["dtype"] == "float32"
    summary = gptq_tools.checkpoint_summary(run.out_dir)
    assert (summary["method"], summary["format"], summary["bits"], summary["group_size"], summary["sym"]) == \
        ("compressed-tensors", "pack-quantized", 4, 128, False)
    assert summary["activations"] is None
    assert summary["tensors"]["weight_packed"] == {"I32": N_LAYERS}
    assert summary["tensors"]["weight_zero_point"] == {"I32": N_LAYERS}  # asymmetric: a zero point per group
    assert gptq_tools.dir_size_bytes(run.out_dir) < gptq_tools.dir_size_bytes(BUNDLED_DIR)  # float32 embeddings

    model = gptq_tools.load_quantized(run.out_dir)
    layers = [m for m in model.modules() if getattr(m, "quantization_scheme", None) is not None]
    assert len(layers) == N_LAYERS and not hasattr(model.lm_head, "quantization_scheme")
    for layer in layers:  # dequantized at load: w / scale + zero is an integer in [-8, 7] in every group of 128
        w = layer.weight.detach().reshape(layer.out_features, -1, 128)
        q = w / layer.weight_scale.detach()[:, :, None] + layer.weight_zero_point.detach()[:, :, None]
        assert torch.allclose(q, q.round(), atol=1e-3) and q.min() >= -8.001 and q.max() <= 7.001
    _check_reloaded(model, tokenizer, float_ppl, tolerance=0.03)


@pytest.mark.slow
def test_smoothquant_w8a8_quantizes_weights_and_activations(smoothquant_run, tokenizer, float_ppl):
    run, leaked = smoothquant_run
    assert leaked == "" and run.settings["smoothing_strength"] == 0.8
    summary = gptq_tools.checkpoint_summary(run.out_dir)
    assert (summary["format"], summary["bits"], summary["group_size"], summary["sym"], summary["activations"]) == \
        ("int-quantized", 8, -1, True, "int8 token dynamic")
    assert summary["tensors"]["weight"]["I8"] == N_LAYERS
    assert gptq_tools.dir_size_bytes(run.out_dir) < gptq_tools.dir_size_bytes(BUNDLED_DIR)
    # smoothing folded 1/s into the norms before the attention and the MLP
    original, smoothed = load_file(BUNDLED_DIR / "model.safetensors"), load_file(run.out_dir / "model.safetensors")
    for norm in ("input_layernorm", "post_attention_layernorm"):
        key = f"model.layers.0.{norm}.weight"
        assert not torch.allclose(original[key].float(), smoothed[key].float(), rtol=1e-2)

    model = gptq_tools.load_quantized(run.out_dir)
    layer = model.model.layers[0].self_attn.q_proj
    w = layer.weight.detach() / layer.weight_scale.detach()  # int8 grid, one scale per output channel
    assert torch.allclose(w, w.round(), atol=1e-3) and w.abs().max() <= 128.001
    x = torch.randn(2, 5, 256, generator=torch.Generator().manual_seed(0)) * 3
    scale = x.abs().amax(-1, keepdim=True) / 127.5  # compressed-tensors' symmetric int8 scale, per token
    x_int8 = (x / scale).round().clamp(-128, 127) * scale
    with torch.no_grad():
        y = layer(x)
        assert torch.allclose(y, torch.nn.functional.linear(x_int8, layer.weight), atol=1e-5)  # activations rounded
        assert not torch.allclose(y, torch.nn.functional.linear(x, layer.weight), atol=1e-4)
    _check_reloaded(model, tokenizer, float_ppl, tolerance=0.01)  # W8A8: measured 44.30 vs 44.29


@pytest.mark.slow
def test_smoothquant_can_be_skipped(tmp_path, calibration):
    _skip_unless_installed("llmcompressor")
    run, leaked = _quantize(awq_tools.smoothquant_w8a8_with_llmcompressor, tmp_path / "plain", calibration,
                            smoothing_strength=None)
    assert leaked == "" and run.settings["smoothing_strength"] is None
    original, plain = load_file(BUNDLED_DIR / "model.safetensors"), load_file(run.out_dir / "model.safetensors")
    key = "model.layers.0.input_layernorm.weight"
    assert torch.equal(original[key].float(), plain[key].float())  # no smoothing: norms untouched


def test_llmcompressor_mappings_match_the_course_scale_groups():
    _skip_unless_installed("llmcompressor")
    from course_lib.awq import ScaleGroup, architecture_groups, scale_groups

    rows = awq_tools.llmcompressor_awq_mappings(BUNDLED_DIR)
    model, _ = load_model()
    course = architecture_groups(model)
    assert [(r["smooth"], r["balance"], r["inspect"]) for r in rows] == [(g.prev, g.layers, g.inspect) for g in course]
    applied = {ScaleGroup(r["smooth"], r["balance"], r["inspect"]) for r in rows if r["applies"]}
    assert applied == set(scale_groups(model, model.model.layers[0]))  # v -> o left out under GQA by both
    assert [r["smooth"] for r in rows if not r["applies"]] == ["self_attn.v_proj"]


BAD_SETTINGS = [
    (awq_tools.quantize_awq_with_gptqmodel, dict(bits=8), "4-bit codes"),
    (awq_tools.quantize_awq_with_gptqmodel, dict(bits=5), "bits must be one of"),
    (awq_tools.quantize_awq_with_gptqmodel, dict(group_size=256), "group_size must be one of"),
    (awq_tools.quantize_awq_with_gptqmodel, dict(dtype=torch.float32), "dtype must be one of"),
    (awq_tools.quantize_awq_with_gptqmodel, dict(dtype="auto"), "dtype must be one of"),
    (awq_tools.quantize_awq_with_llmcompressor, dict(bits=16), "bits must be one of"),
    (awq_tools.quantize_awq_with_llmcompressor, dict(group_size=0), "group_size must be"),
    (awq_tools.quantize_awq_with_llmcompressor, dict(duo_scaling="yes"), "duo_scaling must be one of"),
    (awq_tools.quantize_awq_with_llmcompressor, dict(duo_scaling=1), "duo_scaling must be one of"),
    (awq_tools.quantize_awq_with_llmcompressor, dict(dtype="int8"), "floating-point"),
    (awq_tools.smoothquant_w8a8_with_llmcompressor, dict(smoothing_strength=1.5), "smoothing_strength"),
    (awq_tools.smoothquant_w8a8_with_llmcompressor, dict(smoothing_strength=True), "smoothing_strength"),
    (awq_tools.smoothquant_w8a8_with_llmcompressor, dict(smoothing_strength="0.5"), "smoothing_strength"),
    (awq_tools.smoothquant_w8a8_with_llmcompressor, dict(dtype="float33"), "floating-point"),
]


@pytest.mark.parametrize("fn, bad, message", BAD_SETTINGS, ids=lambda v: getattr(v, "__name__", None))
def test_bad_settings_raise_value_error(fn, bad, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        fn(BUNDLED_DIR, tmp_path / "out", torch.zeros(2, 16, dtype=torch.long), **bad)


@pytest.mark.parametrize("fn", [awq_tools.quantize_awq_with_gptqmodel, awq_tools.quantize_awq_with_llmcompressor,
                                awq_tools.smoothquant_w8a8_with_llmcompressor])
def test_bad_inputs(fn, tmp_path):
    with pytest.raises(TypeError, match="calibration_batches"):
        fn(BUNDLED_DIR, tmp_path / "a", [[1, 2, 3]])
    with pytest.raises(ValueError, match=r"2-D \(n_samples, seq_len\)"):
        fn(BUNDLED_DIR, tmp_path / "a", torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="no config.json"):
        fn(tmp_path, tmp_path / "a", torch.zeros(2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="must differ"):
        fn(BUNDLED_DIR, BUNDLED_DIR, torch.zeros(2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="no config.json"):
        awq_tools.llmcompressor_awq_mappings(tmp_path)


@pytest.mark.parametrize("module, fn", [("gptqmodel", awq_tools.quantize_awq_with_gptqmodel),
                                        ("llmcompressor", awq_tools.quantize_awq_with_llmcompressor),
                                        ("llmcompressor", awq_tools.smoothquant_w8a8_with_llmcompressor)])
def test_missing_library_names_the_extra(module, fn, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r"pip install -e \.\[compress\]"):
        fn(BUNDLED_DIR, tmp_path / "out", torch.zeros(2, 16, dtype=torch.long))


def test_pinning_patch_is_needed_without_accelerator_and_restored(monkeypatch):
    _skip_unless_installed("llmcompressor")
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.pin_memory
    cache = IntermediatesCache.empty(1, torch.device("cpu"))
    cache.update(0, {"x": torch.arange(3.0)})
    if not torch.accelerator.is_available():  # what fails without the patch (AWQModifier._apply_smoothing)
        with pytest.raises(RuntimeError, match="Cannot access accelerator device"):
            cache.pin_memory(0)
        with awq_tools._no_pinning_without_accelerator():
            assert IntermediatesCache.pin_memory is not original
            cache.pin_memory(0)  # a no-op: no error, values unchanged
            assert torch.equal(cache.fetch(0)["x"], torch.arange(3.0))
        assert IntermediatesCache.pin_memory is original
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    with awq_tools._no_pinning_without_accelerator():  # with an accelerator: nothing is patched
        assert IntermediatesCache.pin_memory is original


def test_gptqmodel_float32_backup_aliases_the_weight():
    """The reason quantize_awq_with_gptqmodel refuses float32 (see describe_tool_notes)."""
    weight = torch.nn.Linear(4, 4).weight
    backup = weight.detach().to(torch.float32).cpu().contiguous()  # GPTQModel 7.6's "master copy"
    assert backup.data_ptr() == weight.data_ptr()  # no copy: the same storage
    bf16 = weight.detach().to(torch.bfloat16)
    assert bf16.to(torch.float32).cpu().contiguous().data_ptr() != bf16.data_ptr()  # 16-bit: a real copy
    spec = importlib.util.find_spec("gptqmodel")
    if spec is None:
        pytest.skip("gptqmodel is not installed")
    source = (Path(spec.origin).parent / "looper" / "awq_processor.py").read_text()
    assert "fc.weight.detach().to(torch.float32).cpu().contiguous()" in source  # still there: revisit if fixed


def test_checkpoint_summary_reads_awq_and_w8a8_configs(tmp_path):
    autoawq = {"bits": 4, "group_size": 128, "quant_method": "awq", "version": "gemm", "zero_point": True}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": autoawq}))
    save_file({"a.qweight": torch.zeros(4, 1, dtype=torch.int32), "a.scales": torch.zeros(1, 8, dtype=torch.float16)},
              tmp_path / "model.safetensors")
    summary = gptq_tools.checkpoint_summary(tmp_path)
    assert (summary["method"], summary["format"], summary["bits"], summary["sym"], summary["act_order"]) == \
        ("awq", "gemm", 4, False, False)
    assert summary["tensors"] == {"qweight": {"I32": 1}, "scales": {"F16": 1}}
    w8a8 = {"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {"group_0": {
        "weights": {"num_bits": 8, "group_size": None, "symmetric": True, "actorder": None, "strategy": "channel"},
        "input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}}}}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": w8a8}))
    summary = gptq_tools.checkpoint_summary(tmp_path)
    assert (summary["bits"], summary["group_size"], summary["activations"]) == (8, -1, "int8 token dynamic")
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bnb"}}))
    with pytest.raises(ValueError, match="none of 'gptq', 'awq'"):
        gptq_tools.load_quantized(tmp_path)


@pytest.mark.parametrize("group_size, backend", [(128, None), (-1, "torch_awq"), (16, "torch_awq")])
def test_load_quantized_picks_a_cpu_kernel_for_awq_group_sizes(group_size, backend, tmp_path, monkeypatch):
    """gptqmodel's automatic CPU kernels call _weight_int4pack_mm_cpu (groups of 32-256 only)."""
    _skip_unless_installed("gptqmodel")
    import transformers

    qc = {"bits": 4, "group_size": group_size, "quant_method": "awq", "version": "gemm", "zero_point": True}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": qc}))
    calls = []

    class Loaded:
        def eval(self):
            return self

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda path, **kwargs: calls.append(kwargs) or Loaded())
    gptq_tools.load_quantized(tmp_path)
    config = calls[0].get("quantization_config")
    assert (config.backend if config is not None else None) == backend
    assert calls[0]["dtype"] == torch.float32


@pytest.mark.parametrize("describe, dates, evidence", [
    (awq_tools.describe_autoawq_status, {"2026-11-22", "2026-12-03"},
     ("0.2.9", "officially deprecated", "vllm-project/llm-compressor", "OfflineModeIsEnabled", "45.07",
      "intel_extension_for_pytorch", "PyTorch 2.8.*", "unexpected keyword argument 'bits'")),
    (awq_tools.describe_tool_notes, {"2026-11-22"},
     ("Cannot access accelerator device when none is available", "48.25", "no clipping search")),
    (awq_tools.describe_seed_claims, {"2026-12-03"},
     ("Qwen3MoeForCausalLM", "mixtral.py", "deepseek_v3", "compute capability >= 7.5", ">= 8.0",
      "IST-DASLab/marlin")),
])
def test_recorded_evidence(describe, dates, evidence):
    rows = describe()
    fields = {"topic", "finding", "command", "checked"}
    assert rows and all(set(r) in (fields, fields | {"short"}) for r in rows)
    assert all(r["checked"] in dates and r["command"] and r["finding"] for r in rows)
    assert all(len(r.get("short", "")) <= 100 for r in rows)  # one line of the notebook's table
    if describe is not awq_tools.describe_tool_notes:
        assert all(r.get("short") for r in rows)
    text = " ".join(r["finding"] for r in rows)
    for item in evidence:
        assert item in text, item
    rows[0]["finding"] = "changed"  # callers get copies
    assert describe()[0]["finding"] != "changed"
