"""course_lib.gptq.teach: the OBS toy, the column-by-column walk and the measurement helpers."""

import pytest
import torch

from course_lib.gptq import gptq_quantize_weight
from course_lib.gptq import teach


def _layer(out_f=16, in_f=32, n=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(in_f, in_f, generator=gen) / in_f**0.5 + torch.eye(in_f)
    X = torch.randn(n, in_f, generator=gen) @ mix  # correlated inputs, like a real layer's
    X[:, 0] *= 6.0  # one heavily used input: an uneven diag(H)
    W = torch.randn(out_f, in_f, generator=gen) * 0.1
    return W, X


def test_obs_update_sets_the_weight_and_beats_naive_rounding():
    H = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    toy = teach.obs_toy([0.3, 1.0], H, step=1.0)
    assert toy.w_obs[0].item() == 0.0 and toy.w_naive.tolist() == [0.0, 1.0]
    assert toy.w_obs[1].item() == pytest.approx(1.15)  # w1 + (w0 - q0) * h01 / h11
    assert toy.loss_naive == pytest.approx(0.5 * 0.09 * 2.0)
    assert toy.loss_obs == pytest.approx(0.5 * 0.09 / torch.linalg.inv(H.double())[0, 0].item())
    assert toy.loss_obs < toy.loss_naive


def test_obs_update_is_the_constrained_minimum():
    """Among all vectors with w_q fixed, OBS's has the smallest quadratic loss (checked on a line search)."""
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(3, 3, generator=gen)
    H = A @ A.T + torch.eye(3)
    w = torch.randn(3, generator=gen)
    new = teach.obs_update(w, H, 1, 0.5)
    assert new[1].item() == pytest.approx(0.5)
    best = teach.quadratic_loss(new - w, H)
    for _ in range(20):
        other = new + 0.05 * torch.randn(3, generator=gen)
        other[1] = 0.5
        assert teach.quadratic_loss(other - w, H) >= best - 1e-9


def test_obs_toy_rejects_bad_input():
    with pytest.raises(ValueError, match="positive-definite"):
        teach.obs_toy([0.1, 0.2], [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="shape"):
        teach.obs_toy([0.1, 0.2, 0.3], torch.eye(2))


def test_output_error_is_the_quadratic_form():
    W, X = _layer()
    Q = W + 0.01 * torch.randn_like(W)
    assert teach.output_error(W, Q, X) == pytest.approx(teach.quadratic_loss(Q - W, teach.hessian(X)), rel=1e-5)


def test_walk_matches_course_lib_gptq_and_rtn():
    W, X = _layer()
    H = teach.hessian(X)
    for g in (None, 8):
        walk = teach.gptq_walk(W, H, 3, group_size=g)
        res = gptq_quantize_weight(W, H, 3, group_size=g, static_groups=True, blocksize=8)
        assert (walk.Q - res.qweight_float).abs().max() < 1e-5
        assert walk.loss == pytest.approx(teach.quadratic_loss(res.qweight_float - W, H), rel=1e-4)
        rtn = teach.gptq_walk(W, H, 3, group_size=g, update="none")
        from course_lib.quant.affine import fake_quantize

        ref = fake_quantize(W, 3, granularity="group" if g else "channel", group_size=g, gptq_grid=True)
        # a group's largest weight sits on a rounding tie of GPTQ's grid: float64 (walk) and float32 may
        # break it differently, one grid step apart; everything else is identical
        diff = (rtn.Q - ref).abs()
        assert (diff < 1e-6).float().mean() > 0.99 and diff.max() < 1.01 * rtn.Q.abs().max() / 3.5
        assert walk.loss < rtn.loss
        assert walk.cols[-1] == W.shape[1]


def test_walk_records_and_rejects():
    W, X = _layer()
    walk = teach.gptq_walk(W, teach.hessian(X), 4, record_every=5)
    assert walk.cols == [5, 10, 15, 20, 25, 30, 32] and walk.running[0] <= walk.running[-1]
    with pytest.raises(ValueError, match="update"):
        teach.gptq_walk(W, teach.hessian(X), update="magic")
    with pytest.raises(ValueError, match="divide"):
        teach.gptq_walk(W, teach.hessian(X), group_size=5)


def test_seed_update_uses_h_and_is_worse_than_gptq():
    W, X = _layer()
    H = teach.hessian(X)
    losses = {u: teach.gptq_walk(W, H, 3, update=u).loss for u in teach.UPDATES}
    assert losses["obs"] < losses["none"] < losses["seed"]


def test_blocksize_sweep_gives_the_same_weights():
    W, X = _layer(in_f=64)
    rows = teach.blocksize_sweep(W, teach.hessian(X), (1, 16, 64), repeats=1, bits=4, group_size=32)
    assert [r["blocksize"] for r in rows] == [1, 16, 64]
    assert all(r["max |dQ|"] < 1e-4 and r["loss"] == pytest.approx(rows[0]["loss"], rel=1e-4) for r in rows)


def test_damp_sweep_and_act_order_helpers():
    W, X = _layer(n=24)  # fewer tokens than inputs: H is singular without dampening
    _, X_val = _layer(n=256, seed=1)
    rows = teach.damp_sweep(W, X, X_val, (1e-4, 1e-2, 1.0), bits=4, group_size=None)
    assert [r["percdamp"] for r in rows] == [1e-4, 1e-2, 1.0]
    assert rows[1]["calibration error"] < rows[2]["calibration error"]
    assert rows[0]["held-out error"] > rows[1]["held-out error"] > rows[2]["held-out error"]  # overfitting to 24 tokens
    assert teach.diag_spread(teach.hessian(X_val)) > 5


def test_layer_inputs_act_order_and_grid_on_a_tiny_model(tmp_path):
    from course_lib.gptq import save_gptq_checkpoint
    from course_lib.lm.models import load_tokenizer, tiny_model
    from course_lib.lm.perplexity import Protocol

    model = tiny_model("llama")
    calib = torch.randint(0, 100, (3, 16))
    name = "model.layers.0.mlp.down_proj"
    X = teach.layer_inputs(model, name, calib, batch_size=2)
    assert X.shape == (48, model.get_submodule(name).in_features)
    both = teach.layer_inputs(model, [name, "model.layers.1.self_attn.q_proj"], calib)
    assert torch.equal(both[name], X)
    rows = teach.act_order_rows(model, [name], calib, torch.randint(0, 100, (2, 16)), bits=4, group_size=None)
    assert rows[0]["layer"] == name and rows[0]["act-order / natural, held-out"] > 0

    kept = {}
    configs = [{"method": "FP"}, {"method": "RTN", "bits": 4, "group_size": 128},
               {"method": "GPTQ", "bits": 4, "group_size": 128, "act_order": True}]
    grid = teach.quantize_grid(model, load_tokenizer(), calib, configs, protocol=Protocol(max_tokens=512), keep=kept)
    assert [(r["method"], r["group"], r["act-order"]) for r in grid] == [("FP", "-", "-"), ("RTN", "g128", "-"),
                                                                          ("GPTQ", "g128", "on")]
    assert all(r["perplexity"] > 1 for r in grid) and sorted(kept) == [0, 1, 2]
    again = teach.quantize_grid(model, load_tokenizer(), calib, configs[:2], protocol=Protocol(max_tokens=512),
                                scored={0: 123.0})  # a perplexity measured before is reused, not recomputed
    assert again[0]["perplexity"] == 123.0 and again[1]["perplexity"] == grid[1]["perplexity"]
    gptq_model, report = kept[2]
    out = save_gptq_checkpoint(gptq_model, report, tmp_path / "ckpt")
    bits = teach.layer_bits_per_weight(out, name)  # down_proj: 128 outputs x 256 inputs
    assert bits["bits per weight"] == pytest.approx(4 + 20 / 128 + 32 / 128)
    with pytest.raises(ValueError, match="not a GPTQ layer"):
        teach.layer_bits_per_weight(out, "model.embed_tokens")


def test_rtn_result_packs_into_quantlinear():
    from course_lib.gptq import QuantLinear
    from course_lib.quant.affine import fake_quantize

    layer = torch.nn.Linear(256, 64, bias=False)
    res = teach.rtn_result(layer.weight, 4, 128)
    q = QuantLinear.from_result(layer, res)
    assert torch.equal(q.dequantized_weight(), res.qweight_float)
    diff = (res.qweight_float - fake_quantize(layer.weight, 4, granularity="group", group_size=128, gptq_grid=True)).abs()
    assert (diff < 1e-3).float().mean() > 0.99  # fp16-rounded scales may tip a near-tie to the next code


def test_quantize_grid_rejects_unknown_methods():
    with pytest.raises(ValueError, match="method"):
        teach.quantize_grid(torch.nn.Linear(2, 2), None, torch.zeros(1, 1, dtype=torch.long), [{"method": "SpQR"}])


def test_quantize_grid_names_each_grid_and_rejects_a_restricted_awq(tmp_path):
    from course_lib.lm.models import load_tokenizer, tiny_model
    from course_lib.lm.perplexity import Protocol

    model = tiny_model("llama")
    calib = torch.randint(0, 100, (2, 16))
    configs = [{"method": "FP"}] + [{"method": m, "bits": 4, "group_size": 128, **g} for m in ("RTN", "GPTQ")
                                     for g in ({"restricted": True}, {}, {"symmetric": False})]
    kept = {}
    rows = teach.quantize_grid(model, load_tokenizer(), calib, configs, protocol=Protocol(max_tokens=512), keep=kept)
    assert [r["grid"] for r in rows] == ["-"] + 2 * ["restricted symmetric [-7, 7]", "GPTQ's grid [-8, 7]",
                                                     "asymmetric [0, 15]"]
    rtn_restricted = kept[1][0].model.layers[0].mlp.down_proj.weight
    assert len(torch.unique(rtn_restricted[0, :128])) <= 15  # [-7, 7]: at most 15 values in a group
    from course_lib.awq import teach as awq_teach

    with pytest.raises(ValueError, match="restricted"):
        awq_teach.quantize_grid(model, None, calib, [{"method": "AWQ", "bits": 4, "restricted": True}])
    with pytest.raises(ValueError, match="awq.teach.quantize_grid"):  # gptq.teach alone knows no AWQ
        teach.quantize_grid(model, None, calib, [{"method": "AWQ", "bits": 4}])


def test_grid_summary_names_a_winner_only_beyond_the_spread():
    from course_lib.gptq.bench import grid_summary

    def rows(rtn, gptq):
        return ([{"grid": "g", "bits": 4, "method": "RTN", "seed": None, "ppl_fast": rtn}]
                + [{"grid": "g", "bits": 4, "method": "GPTQ", "seed": i, "ppl_fast": p} for i, p in enumerate(gptq)])

    assert grid_summary(rows(45.0, [44.5, 44.6, 44.55]))[0]["verdict"] == "GPTQ lower"  # margin 0.45 > spread 0.1
    assert grid_summary(rows(44.9, [44.5, 44.7, 44.6]))[0]["verdict"] == "GPTQ lower"   # mean margin 0.3 > spread 0.2
    assert grid_summary(rows(44.9, [44.5, 44.8, 44.6]))[0]["verdict"] == "tie"          # margin 0.27 < spread 0.3
    assert grid_summary(rows(44.6, [44.5, 44.7, 44.6]))[0]["verdict"] == "tie"          # a seed on each side
    assert grid_summary(rows(44.9, [44.4, 44.95]))[0]["verdict"] == "tie"               # one seed above RTN
    assert grid_summary(rows(44.4, [44.6, 44.65]))[0]["verdict"] == "RTN lower"
    summary = grid_summary(rows(45.0, [44.5, 44.6]))[0]
    assert summary["GPTQ spread"] == pytest.approx(0.1) and summary["RTN - GPTQ mean"] == pytest.approx(0.45)
    with pytest.raises(ValueError, match="No RTN row"):
        grid_summary(rows(45.0, [44.5])[1:])
    from course_lib.gptq.bench import grid_rows

    with pytest.raises(ValueError, match="distinct"):
        grid_rows(seeds=(0, 0))
