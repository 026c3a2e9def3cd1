"""course_lib.quant.rtn: round-to-nearest over tiny models of three layouts and the bundled model."""

import pytest
import torch

from course_lib.lm import models
from course_lib.lm.perplexity import FAST, perplexity
from course_lib.quant import fake_quantize, quantize_model_rtn


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _distinct_per_group(w: torch.Tensor, group_size: int) -> int:
    """The largest number of distinct values in any group of `group_size` along the rows of w (out, in)."""
    g = w.reshape(w.shape[0], -1, group_size).sort(dim=-1).values
    return int((g.diff(dim=-1) != 0).sum(dim=-1).max()) + 1


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_rtn_changes_every_linear_but_lm_head(arch):
    model = models.tiny_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = models.linear_layers(model)
    report = quantize_model_rtn(model, 4, granularity="group", group_size=64)
    assert report.model is model and report.bits == 4 and report.group_size == 64
    assert [d["name"] for d in report.layers] == list(layers)
    for name, m in layers.items():
        w = models.weight_matrix(m)
        assert not torch.equal(m.weight, before[name + ".weight"]), name
        assert _distinct_per_group(w, 64) <= 2**4, name
        assert 0 < report.layers[list(layers).index(name)]["rel_fro"] < 0.2
        if m.bias is not None:
            assert torch.equal(m.bias, before[name + ".bias"])  # weight-only
    assert torch.equal(model.lm_head.weight, before["lm_head.weight"])
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed == {n + ".weight" for n in layers}
    rows = report.rows()
    assert len(rows) == len(layers) and set(rows[0]) == {"layer", "shape", "rel_fro"}


def test_rtn_conv1d_is_quantized_per_output_row():
    """GPT-2's Conv1D stores (in, out); the groups must run along `in` of each output row."""
    model = models.tiny_model("gpt2")
    c_attn = model.transformer.h[0].attn.c_attn
    w = c_attn.weight.detach().t().clone()  # (out, in)
    quantize_model_rtn(model, 3, granularity="channel")
    assert torch.equal(c_attn.weight.t(), fake_quantize(w, 3, granularity="channel"))


def test_rtn_copy_and_errors():
    model = models.tiny_model("llama")
    before = model.model.layers[0].mlp.down_proj.weight.clone()
    report = quantize_model_rtn(model, 8, inplace=False)
    assert report.model is not model and torch.equal(model.model.layers[0].mlp.down_proj.weight, before)
    with pytest.raises(ValueError, match=r"q_proj.*group_size 256 does not divide in_features 128"):
        quantize_model_rtn(model, 4, group_size=256)
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, before)  # checked before changing anything


@pytest.mark.slow
def test_bundled_model_keeps_its_perplexity_at_8_bits():
    """8-bit per-group RTN leaves the bundled model's FAST perplexity (44.29) within 1% (measured 44.28;
    4-bit group 128 gives 44.58). About 8 s on one thread: load 4 s, FAST perplexity 4 s."""
    model, tok = models.load_model(device="cpu")
    quantize_model_rtn(model, 8, granularity="group", group_size=128)
    ppl = perplexity(model, tok, FAST).ppl
    assert abs(ppl / 44.29 - 1) < 0.01
