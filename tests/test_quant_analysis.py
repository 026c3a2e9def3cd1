"""Chapter 02's measurement helpers: error tables, symmetric grids, int4 storage, activation hooks, histograms."""

import math

import pytest
import torch

from course_lib.lm.models import linear_layers, tiny_model
from course_lib.quant.activations import (
    activation_stats,
    by_layer_kind,
    capture_inputs,
    memory_split,
    range_rows,
    saved_activation_bytes,
    weight_ratios,
)
from course_lib.quant.analysis import (
    aggregate_rel_error,
    codes_used,
    grid_table,
    group_size_table,
    granularity_table,
    model_weights,
    packed_int4_storage,
    rtn_sweep,
    symmetric_grid_quantize,
    symmetric_grids,
)
from course_lib.quant.widgets import common_group_sizes, error_histogram, error_histogram_widget


def weight(seed=0, shape=(64, 256)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", vocab_size=512)


def test_finer_granularity_helps_on_a_matrix_with_an_outlier():
    # Rows of different sizes plus one outlier in one group. Finer blocks never have a larger abs-max
    # (so never a coarser step); on this seeded Gaussian matrix the error falls at every refinement.
    w = weight() * torch.linspace(0.1, 2.0, 64)[:, None]
    w[3, 7] = 40.0
    for row in granularity_table(w, bits=(3, 4, 8), group_sizes=(32, 64, 128)):
        errors = [row[k] for k in ("tensor", "channel", "group 128", "group 64", "group 32")]
        assert all(a >= b for a, b in zip(errors, errors[1:])), row
        assert errors[0] > 2 * errors[1]  # the outlier ruins the per-tensor scale


def test_error_falls_with_bits_and_group_table_is_monotone():
    w = weight(1)
    rows = granularity_table(w, bits=(2, 3, 4, 8))
    assert all(a["channel"] > b["channel"] for a, b in zip(rows, rows[1:]))
    g = group_size_table(w, bits=4, group_sizes=(256, 16, 64, 32, 128))
    assert [r["group size"] for r in g] == [16, 32, 64, 128, 256]
    # nested groups (each group of 2g is two groups of g): never a coarser step, lower mean error here
    assert all(a["mse"] <= b["mse"] for a, b in zip(g, g[1:]))
    assert g[0]["bits per weight"] == pytest.approx(4 + 16 / 16) and g[-1]["bits per weight"] == pytest.approx(4 + 16 / 256)


def test_group_size_where_the_order_is_forced():
    # Every group of 16 lies exactly on its own 4-bit grid (integer multiples of its own step, with the
    # top code reached), and the steps differ between groups: group 16 is exact, larger groups must mix
    # two steps and round some values.
    gen = torch.Generator().manual_seed(7)
    codes = torch.randint(-7, 8, (8, 64), generator=gen).float()
    codes[:, ::16] = 7
    steps = torch.tensor([1.0, 0.37, 0.11, 0.053]).repeat_interleave(16)
    rows = group_size_table(codes * steps, bits=4, group_sizes=(16, 32, 64))
    assert rows[0]["mse"] < 1e-12 and rows[1]["mse"] > 0 and rows[2]["mse"] > 0


def test_aggregate_error_weighs_by_size():
    a, b = weight(2, (8, 16)), weight(3, (32, 16))
    zero = aggregate_rel_error({"a": a, "b": b}, lambda w: torch.zeros_like(w))
    assert zero == pytest.approx(1.0)
    half = aggregate_rel_error({"a": a, "b": b}, lambda w: w / 2)
    assert half == pytest.approx(0.5)
    with pytest.raises(TypeError, match="dict"):
        aggregate_rel_error({}, lambda w: w)


def test_symmetric_grids():
    w = weight(4)
    for bits in (2, 3, 4, 8):
        grids = symmetric_grids(bits)
        q_r, w_r = symmetric_grid_quantize(w, bits, "restricted symmetric")
        q_f, w_f = symmetric_grid_quantize(w, bits, "full, s=max/qmax")
        assert torch.equal(w_r, w_f)  # the same scale: -2^(b-1) is never reached
        for name, (d, qmin, qmax) in grids.items():
            q, w_hat = symmetric_grid_quantize(w, bits, name, group_size=64)
            assert q.min() >= qmin and q.max() <= qmax
    assert codes_used(w, 2, "restricted symmetric") == 3 and codes_used(w, 2, "full, s=max/2^(b-1)") == 4
    rows = grid_table(w, bits=(2, 8))
    assert rows[0]["full, s=max/2^(b-1)"] < rows[0]["restricted symmetric"]
    with pytest.raises(ValueError, match="Unknown grid"):
        symmetric_grid_quantize(w, 4, "nope")


def test_packed_int4_storage():
    w = weight(5, (128, 256))
    row = packed_int4_storage(w, group_size=128)
    assert row["packed codes B"] == 128 * 256 // 2
    assert row["scales B"] == 128 * 2 * 2  # one fp16 scale per group of 128
    assert row["total B"] == row["packed codes B"] + row["scales B"] and row["zeros B"] == 0
    assert row["bits/weight"] == pytest.approx(4 + 16 / 128) and row["roundtrip exact"] is True
    asym = packed_int4_storage(w, group_size=64, symmetric=False)
    assert asym["zeros B"] == 128 * 4 and asym["roundtrip exact"] is True


def test_activation_hooks_cover_every_linear_input(model):
    batches = torch.randint(0, 512, (6, 24), generator=torch.Generator().manual_seed(0))
    hooks_before = sum(len(m._forward_pre_hooks) for m in model.modules())
    stats = activation_stats(model, batches, batch_size=4)
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == hooks_before  # hooks removed
    layers = linear_layers(model)
    assert list(stats) == list(layers)
    direct = capture_inputs(model, list(layers), batches)
    for name, s in stats.items():
        assert s.tokens == 6 * 24 and len(s.window_absmax) == 6 and len(s.medians) == 2
        assert s.channel_absmax.shape == (layers[name].in_features,)
        assert s.absmax == pytest.approx(s.channel_absmax.max().item()) == pytest.approx(max(s.window_absmax))
        assert s.ratio >= 1 and s.channel_ratio >= 1
    # one chunk: the statistics equal those computed directly from the captured inputs
    one = activation_stats(model, batches, batch_size=6)
    for name, x in direct.items():
        a = x.abs().reshape(-1, x.shape[-1])
        assert one[name].absmax == pytest.approx(a.max().item())
        assert one[name].median == pytest.approx(a.median().item())
    rows = range_rows(stats, model)
    assert len(rows) == len(layers) and all(r["act max/median"] >= 1 for r in rows)
    kinds = by_layer_kind(rows)
    assert {k["kind"] for k in kinds} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert sum(k["layers"] for k in kinds) == len(rows)
    with pytest.raises(TypeError, match="LongTensor"):
        activation_stats(model, torch.randn(2, 3))


def test_weight_ratios():
    w = torch.ones(4, 8)
    w[1, 2] = 10.0
    r = weight_ratios(w)
    assert r["ratio"] == pytest.approx(10.0) and r["channel_ratio"] == pytest.approx(10.0)


def test_error_histogram_counts_and_bound():
    w = weight(6, (32, 256))
    for bits, g in [(2, None), (4, 128), (8, 32)]:
        h = error_histogram(w, bits, g, bins=21)
        assert h.numel == w.numel() and len(h.edges) == 22
        assert h.max_abs <= h.half_step * (1 + 1e-5)  # round to nearest: |error| <= s/2
        assert h.stats()["group size"] == (g or "channel")
    coarse, fine = error_histogram(w, 3, None), error_histogram(w, 3, 32)
    assert fine.mse <= coarse.mse and coarse.rel_fro > 0
    with pytest.raises(ValueError, match="divide"):
        error_histogram(w, 4, 100)
    with pytest.raises(TypeError, match="2-D"):
        error_histogram(w[0], 4, 32)


def test_widget_builds(model):
    weights = model_weights(model)
    assert common_group_sizes(weights) == [16, 32, 64, 128]
    widget = error_histogram_widget(model)
    layer, bits, group, stats, image = widget.children
    assert list(layer.options) == list(weights) and bits.value == 4 and group.value == 128
    assert "channel" in group.options and image.value[:4] == b"\x89PNG" and "rel error" in stats.value
    before = image.value
    bits.value = 2  # an observer redraws the plot
    assert image.value != before and "<b>2</b>" in stats.value


def test_rtn_sweep_leaves_model_alone(model):
    from course_lib.lm.perplexity import Protocol

    before = {n: p.clone() for n, p in model.named_parameters()}
    stream = torch.randint(0, 512, (300,), generator=torch.Generator().manual_seed(0))
    configs = [{"bits": 8, "granularity": "channel"}, {"bits": 2, "granularity": "group", "group_size": 64}]
    # with `stream` given, perplexity never touches the tokenizer
    rows = rtn_sweep(model, None, configs, protocol=Protocol(seq_len=64, stride=64, max_tokens=None), stream=stream)
    assert [r["granularity"] for r in rows] == ["channel", "group 64"]
    assert [r["grid"] for r in rows] == ["restricted symmetric [-127, 127]", "restricted symmetric [-1, 1]"]
    assert rows[0]["weight rel error"] < rows[1]["weight rel error"]
    assert all(math.isfinite(r["perplexity"]) for r in rows)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_memory_split_matches_the_size_formulas():
    from course_lib.kv.sizes import load_config

    cfg = load_config("Llama-2-7b-hf")  # 32 layers, 32 KV heads of 128, hidden 4096, MLP 11008
    m = memory_split(cfg, batch=16, seq_len=4096)
    assert m["weights B"] == 6_738_415_616 * 2
    assert m["KV cache B"] == 2 * 16 * 32 * 32 * 128 * 4096 * 2  # K and V x batch x layers x heads x dim x tokens x bytes
    assert m["activations, prefill B"] == 16 * 4096 * (2 * 4096 + 3 * 11008) * 2
    assert m["activations, decode step B"] == m["activations, prefill B"] / 4096
    assert memory_split(cfg, batch=1, seq_len=8, bytes_per_element=1)["weights B"] == m["weights B"] / 2


def test_saved_activation_bytes_grow_with_the_batch_and_leave_the_model_alone(model):
    ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    model.train()
    one, two = saved_activation_bytes(model, ids[:2]), saved_activation_bytes(model, ids)
    assert 0 < one < two <= 2 * one + 1024 and model.training  # about linear in the tokens; mode restored
    assert all(p.grad is None for p in model.parameters())
    logits_bytes = 4 * 32 * model.config.vocab_size * 4  # the float32 logits are kept for the loss's backward
    assert two > logits_bytes
