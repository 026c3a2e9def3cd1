"""course_lib.awq.teach: channel statistics, the keep-1% experiment, one channel scaled up."""

from __future__ import annotations

import pytest
import torch

from course_lib.lm import models
from course_lib.awq import teach
from course_lib.gptq.teach import layer_inputs
from course_lib.quant import fake_quantize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _calib(n=4, seq=32, seed=0):
    return torch.randint(0, 4096, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_channel_stats_match_the_recorded_inputs():
    model, calib = models.tiny_model("llama"), _calib()
    names = teach.block_linears(model)
    assert len(names) == 2 * 7 and "lm_head" not in names
    stats = teach.channel_stats(model, calib, batch_size=3)          # two batches: sums and maxima combine
    X = layer_inputs(model, "model.layers.1.mlp.down_proj", calib)
    torch.testing.assert_close(stats["model.layers.1.mlp.down_proj"]["mean"], X.abs().mean(dim=0))
    torch.testing.assert_close(stats["model.layers.1.mlp.down_proj"]["max"], X.abs().amax(dim=0))


def test_salient_columns_by_each_criterion():
    w = torch.ones(4, 100)
    w[:, 7] = 5.0
    act = torch.ones(100)
    act[42] = 9.0
    assert teach.salient_columns(w, act, 0.01, "activation").tolist() == [42]
    assert teach.salient_columns(w, act, 0.01, "weight").tolist() == [7]
    assert teach.salient_columns(w, act, 0.03, "random", torch.Generator().manual_seed(0)).numel() == 3
    with pytest.raises(ValueError, match="by must be one of"):
        teach.salient_columns(w, act, 0.01, "gradient")
    with pytest.raises(ValueError, match="fraction"):
        teach.salient_columns(w, act, 0.0, "activation")


def test_keep_salient_keeps_the_columns_in_float_and_rounds_the_rest():
    model, calib = models.tiny_model("llama"), _calib()
    stats = teach.channel_stats(model, calib)
    name = "model.layers.0.self_attn.q_proj"
    w0 = model.get_submodule(name).weight.detach().clone()
    kept = teach.keep_salient(model, stats, 3, fraction=0.02, by="activation", group_size=64)
    assert kept == 12 * 3 + 2 * 5        # round(0.02 * 128) = 3 per layer; down_proj reads 256 inputs: 5
    w = model.get_submodule(name).weight.detach()
    cols = stats[name]["mean"].topk(3).indices
    assert torch.equal(w[:, cols], w0[:, cols])
    rest = torch.ones(128, dtype=torch.bool)
    rest[cols] = False
    rtn = fake_quantize(w0, 3, symmetric=False, granularity="group", group_size=64)
    assert torch.equal(w[:, rest], rtn[:, rest])


def test_scaling_a_salient_channel_shrinks_its_error_until_it_sets_the_step():
    torch.manual_seed(0)
    W = torch.randn(64, 128) * 0.02
    x = torch.randn(512, 128)
    x[:, 5] *= 20.0                                                     # a salient input channel
    rows = teach.scaling_rows(W, x, 5, scales=(1.0, 2.0, 32.0), bits=4, group_size=128)
    assert rows[0]["step"] == 1.0 and rows[0]["channel error"] == 1.0
    assert rows[1]["channel error"] < 0.75 and rows[1]["step"] < 1.1  # 2x: error shrinks, step barely moves
    assert rows[2]["step"] > 3 and rows[2]["rows where it sets the step"] > 0.9  # 32x: the column is the group max
    assert rows[1]["output MSE"] < rows[0]["output MSE"]


def test_lm_eval_rows_scores_each_model_in_order_and_quietly(capfd):
    pytest.importorskip("lm_eval")
    from course_lib.lm import eval_tasks as lm_eval_tasks

    tok = models.load_tokenizer()
    a, b = models.tiny_model("llama", seed=0), models.tiny_model("llama", seed=1)
    rows = teach.lm_eval_rows([a, b, a], tok, ("course_ppl",), limit=2)
    assert len(rows) == 3 and rows[0] == rows[2] and rows[0] != rows[1]
    assert rows[1] == lm_eval_tasks.evaluate(b, tok, tasks=("course_ppl",), limit=2)
    capfd.readouterr()
    teach.lm_eval_rows([a], tok, ("course_ppl",), limit=2)
    assert "%|" not in capfd.readouterr().err  # lm-eval's progress bars are swallowed


def test_salient_output_error_is_keep_salient_on_one_layer():
    """The layer-level keep-1%: the same weights as keep_salient, scored on the layer's output."""
    model, calib = models.tiny_model("llama"), _calib()
    stats = teach.channel_stats(model, calib)
    name = "model.layers.1.mlp.down_proj"
    X = layer_inputs(model, name, calib)
    w0 = model.get_submodule(name).weight.detach().clone()
    y = X @ w0.T
    errs = {by: teach.salient_output_error(X, w0, stats[name]["mean"], 3, by=by, fraction=0.05, group_size=64)
            for by in (None, "activation", "weight")}
    teach.keep_salient(model, {name: stats[name]}, 3, fraction=0.05, by="activation", group_size=64)
    w_kept = model.get_submodule(name).weight.detach()
    expected = (torch.linalg.vector_norm(X @ w_kept.T - y) / torch.linalg.vector_norm(y)).item()
    assert errs["activation"] == pytest.approx(expected, rel=1e-5)
    rtn = fake_quantize(w0, 3, symmetric=False, granularity="group", group_size=64)
    assert errs[None] == pytest.approx((torch.linalg.vector_norm(X @ rtn.T - y) / torch.linalg.vector_norm(y)).item(),
                                       rel=1e-5)
    assert errs["activation"] < errs[None]
    assert teach.salient_output_error(X, w0, stats[name]["mean"], 8, by=None, group_size=64) < errs[None] / 10
