"""course_lib.prune: magnitude, Wanda, SparseGPT (one matrix and a whole model), N:M patterns."""

import copy

import pytest
import torch

from course_lib.gptq.hessian import HessianAccumulator
from course_lib.gptq.teach import hessian, layer_inputs, output_error
from course_lib.lm.models import load_model, tiny_model
from course_lib.prune.model import model_sparsity, prune_model
from course_lib.prune.sparsegpt import sparsegpt_prune_weight
from course_lib.prune.unstructured import (check_sparsity, magnitude_mask, mask_from_scores, nm_violations,
                                           norms_from_hessian, parse_nm, seed_magnitude_pruning, sparsity_of,
                                           wanda_mask, wanda_scores)
from course_lib.lm.tokens import calibration_batches


def _correlated_inputs(n=1024, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g) @ (0.3 * torch.randn(d, d, generator=g))
    return X + 3 * torch.randn(d, generator=g) * (torch.rand(d, generator=g) < 0.05)  # a few outlier channels


@pytest.fixture(scope="module")
def bundled():
    model, tok = load_model(device="cpu")
    return model, tok


@pytest.mark.parametrize("p", [0.1, 1 / 3, 0.5, 0.7])
def test_wanda_prunes_exactly_int_in_p_per_row(p):
    W = torch.randn(64, 96)
    keep = wanda_mask(W, torch.rand(96) + 0.1, p)
    assert ((~keep).sum(dim=1) == int(96 * p)).all()


def test_wanda_with_equal_norms_is_per_row_magnitude():
    W = torch.randn(32, 64)
    for p in (0.25, 0.5):
        assert torch.equal(wanda_mask(W, torch.full((64,), 2.5), p), magnitude_mask(W, p, scope="row"))
    assert not torch.equal(wanda_mask(W, torch.linspace(0.1, 5, 64), 0.5), magnitude_mask(W, 0.5, scope="row"))


def test_magnitude_layer_scope_counts_exactly_even_with_ties():
    W = torch.tensor([[1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, 2.0, -3.0]])  # six tied magnitudes
    keep = magnitude_mask(W, 0.5)
    assert (~keep).sum() == 4 and keep[1, 2] and keep[1, 3] and not keep[0, 0]  # ties: earlier index first
    # the seed's quantile threshold (here 1.0) with '>' prunes every tie: 6 of 8 (75%) for a requested 50%
    _, mask = seed_magnitude_pruning(W, 0.5)
    assert (mask == 0).sum() == 6


def test_seed_magnitude_fails_on_half_precision_weights():
    with pytest.raises(RuntimeError, match="float or double"):
        seed_magnitude_pruning(torch.randn(8, 8).bfloat16(), 0.5)
    keep = magnitude_mask(torch.randn(8, 8).bfloat16(), 0.5)
    assert (~keep).sum() == 32


@pytest.mark.parametrize("nm", ["2:4", "4:8", (1, 4)])
def test_nm_masks_hold_the_pattern(nm):
    n, m = parse_nm(nm)
    W = torch.randn(16, 64)
    X = _correlated_inputs(d=64)
    for keep in (magnitude_mask(W, nm=nm), wanda_mask(W, X.norm(dim=0), nm=nm),
                 sparsegpt_prune_weight(W, hessian(X), nm=nm).mask):
        zeros_per_group = (~keep).reshape(16, -1, m).sum(-1)
        assert (zeros_per_group >= m - n).all()
        assert nm_violations(W * keep, nm) == 0
    res = sparsegpt_prune_weight(W, hessian(X), nm=nm)
    assert nm_violations(res.weight, nm) == 0 and abs(sparsity_of(res.weight) - (1 - n / m)) < 1e-9


def test_sparsegpt_zero_sparsity_returns_w_and_compensates_otherwise():
    W, X = torch.randn(48, 128), _correlated_inputs()
    res = sparsegpt_prune_weight(W, hessian(X), 0.0)
    torch.testing.assert_close(res.weight, W, rtol=0, atol=1e-5)
    res = sparsegpt_prune_weight(W, hessian(X), 0.5)
    kept = res.mask
    assert (res.weight[~kept] == 0).all() and abs(sparsity_of(res.weight) - 0.5) < 1e-9
    assert (res.weight[kept] - W[kept]).abs().max() > 1e-3  # kept weights absorbed the pruned ones' error
    # and its estimate of the output error is the measured one plus the dampening term
    damp_term = res.damp / 2 * ((res.weight - W) ** 2).sum().item()
    assert abs(res.loss - (output_error(W, res.weight, X) + damp_term)) < 1e-3 * res.loss


def test_sparsegpt_beats_magnitude_and_wanda_on_real_calibration(bundled):
    model, tok = bundled
    calib = calibration_batches(tok, 16, 128)
    names = ["model.layers.2.self_attn.q_proj", "model.layers.4.mlp.down_proj", "model.layers.6.mlp.up_proj"]
    inputs = layer_inputs(model, names, calib)
    for name in names:
        X, W = inputs[name], model.get_submodule(name).weight.detach()
        err = {"magnitude": output_error(W, W * magnitude_mask(W, 0.5), X),
               "wanda": output_error(W, W * wanda_mask(W, X.norm(dim=0), 0.5), X),
               "sparsegpt": output_error(W, sparsegpt_prune_weight(W, hessian(X), 0.5).weight, X)}
        assert err["sparsegpt"] < min(err["magnitude"], err["wanda"]), (name, err)


def test_sparsegpt_joint_quantization_keeps_zeros_and_the_grid():
    W, X = torch.randn(16, 128), _correlated_inputs()
    res = sparsegpt_prune_weight(W, hessian(X), 0.5, bits=4)
    assert (res.weight[~res.mask] == 0).all() and sparsity_of(res.weight) >= 0.5
    for row in res.weight:  # every row takes at most 2^4 distinct values (16 levels of one scale)
        assert len(torch.unique(row)) <= 16


def test_norms_from_hessian():
    X = _correlated_inputs(n=300)
    acc = HessianAccumulator(X.shape[1])
    acc.add_batch(X[:100])
    acc.add_batch(X[100:])
    torch.testing.assert_close(norms_from_hessian(acc.H, acc.n), X.norm(dim=0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "opt"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_model_on_tiny_models(arch, method):
    model = tiny_model(arch)
    vocab = model.get_input_embeddings().weight.shape[0]
    calib = torch.randint(0, vocab, (4, 32), generator=torch.Generator().manual_seed(0))
    head = model.get_output_embeddings().weight.detach().clone()
    report = prune_model(model, calib, method, sparsity=0.5, progress=False)
    assert len(report.layers) > 0 and all(abs(d["sparsity"] - 0.5) < 0.01 for d in report.layers)
    assert torch.equal(model.get_output_embeddings().weight, head)  # lm_head stays dense
    assert abs(model_sparsity(model)["linear_sparsity"] - 0.5) < 0.01
    assert torch.isfinite(model(calib).logits).all()


def test_prune_model_nm_and_sequential_inputs():
    model = tiny_model("llama")
    calib = torch.randint(0, 4096, (4, 32), generator=torch.Generator().manual_seed(1))
    pruned = copy.deepcopy(model)
    report = prune_model(pruned, calib, "sparsegpt", nm="2:4", progress=False)
    for d in report.layers:
        assert nm_violations(pruned.get_submodule(d["name"]).weight, "2:4") == 0
    # the second block was pruned on inputs from the pruned first block, so its Hessian differs
    # from the dense model's: one-shot (non-sequential) SparseGPT on the dense inputs gives other weights
    name = "model.layers.1.self_attn.q_proj"
    X = layer_inputs(model, name, calib)
    alone = sparsegpt_prune_weight(model.get_submodule(name).weight, hessian(X), nm="2:4").weight
    assert not torch.allclose(alone, pruned.get_submodule(name).weight, atol=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        check_sparsity(1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        magnitude_mask(torch.randn(4, 8), -0.1)
    with pytest.raises(TypeError, match="number"):
        check_sparsity("half")
    with pytest.raises(ValueError, match="0 < N < M"):
        parse_nm("4:2")
    with pytest.raises(ValueError, match="'N:M'"):
        parse_nm("2-4")
    with pytest.raises(ValueError, match="divisible by 4"):
        wanda_mask(torch.randn(4, 6), torch.ones(6), nm="2:4")
    with pytest.raises(ValueError, match="one norm per input"):
        wanda_mask(torch.randn(4, 8), torch.ones(7), 0.5)
    with pytest.raises(ValueError, match="scope"):
        mask_from_scores(torch.randn(4, 8), 0.5, scope="column")
    with pytest.raises(ValueError, match="multiple of M"):
        sparsegpt_prune_weight(torch.randn(4, 16), torch.eye(16), nm="2:8", blocksize=4)
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="method must be one of"):
        prune_model(model, None, "random")
    with pytest.raises(ValueError, match="needs calibration"):
        prune_model(model, None, "wanda")
    with pytest.raises(ValueError, match="SparseGPT option"):
        prune_model(model, None, "magnitude", bits=4)
    with pytest.raises(ValueError, match="divisible by 3"):
        prune_model(model, None, "magnitude", nm="1:3")
    with pytest.raises(ValueError, match="unsupported architecture"):
        prune_model(tiny_model("gpt2"), None, "magnitude")


def test_wanda_moves_the_input_norms_to_the_weights_device():
    # the norms come from the calibration pass, possibly on another device than the weight (a CUDA model's W and
    # norms computed on CPU); on "meta" the product would raise if the norms stayed on the CPU
    W, x_norm = torch.empty(4, 8, device="meta"), torch.ones(8)
    assert wanda_scores(W, x_norm).device.type == "meta"
