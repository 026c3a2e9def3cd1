"""course_lib.mixed: sensitivity measured per layer and setting, budgets allocated exactly (DP against brute force),
greedily and by annealing without ever exceeding the target, and mixed checkpoints that transformers reloads."""

from __future__ import annotations

import json
import random

import pytest
import torch

from course_lib.lm.models import tiny_model
from course_lib.mixed import allocate as A
from course_lib.mixed.sensitivity import SETTINGS, Measurement, Setting, measure, relative_output_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FEW = [Setting(2, 64), Setting(4, 64), Setting(8, 128)]


def random_measurement(n_layers: int, settings=SETTINGS, seed: int = 0) -> Measurement:
    """Errors that fall with bits and grow with group size, with a per-layer sensitivity."""
    rng = random.Random(seed)
    shapes = [rng.choice([(128, 128), (256, 128), (128, 256), (384, 256)]) for _ in range(n_layers)]
    error = []
    for _ in range(n_layers):
        k = rng.uniform(0.3, 3.0)
        error.append([k * 2.0 ** -s.bits * (1 + s.group_size / 512) * rng.uniform(0.9, 1.1) for s in settings])
    return Measurement([f"model.layers.{i}.mlp.up_proj" for i in range(n_layers)], shapes, list(settings), error)


def test_layer_bits_count_codes_scales_and_shape():
    s = Setting(3, 128)
    # 256 x 768: 768 * 3 / 32 = 72 words per row, 6 fp16 scales per row, 2 int64 for the shape
    assert s.layer_bits(256, 768) == 32 * 256 * 72 + 16 * 256 * 6 + 128
    assert s.bits_per_weight(4096, 4096) == pytest.approx(3 + 16 / 128, abs=1e-4)
    assert Setting(5, 32).layer_bits(10, 96) == 32 * 10 * 15 + 16 * 10 * 3 + 128  # 96 * 5 / 32 = 15 words
    with pytest.raises(ValueError, match="does not divide"):
        Setting(4, 128).layer_bits(64, 96)


def test_relative_output_error_equals_the_direct_computation():
    torch.manual_seed(0)
    W, X = torch.randn(16, 32), torch.randn(200, 32)
    Q = W + 0.05 * torch.randn_like(W)
    H = 2 / X.shape[0] * X.T @ X
    direct = ((X @ (Q - W).T).norm() / (X @ W.T).norm()).item()
    assert relative_output_error(W, Q, H) == pytest.approx(direct, rel=1e-6)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("llama")
    calib = torch.randint(1, 4096, (4, 32), generator=torch.Generator().manual_seed(0))
    return model, calib


def test_measure_every_layer_and_setting_and_cache(tiny, tmp_path, monkeypatch):
    model, calib = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = measure(model, calib, FEW, cache_dir=tmp_path)
    assert len(m.layers) == 14 and len(m.settings) == 3 and len(list(tmp_path.iterdir())) == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())       # model unchanged
    err = m.error_tensor()
    assert (err[:, 0] > err[:, 1]).all() and (err[:, 1] > err[:, 2]).all()              # more bits, less error
    assert (err[:, 1] > 0.01).all() and (err[:, 2] < 0.02).all()
    import course_lib.mixed.sensitivity as sens

    monkeypatch.setattr(sens, "gptq_quantize_weight", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    again = measure(model, calib, FEW, cache_dir=tmp_path)                              # read from the cache
    assert again.error == m.error and again.layers == m.layers
    with pytest.raises(AssertionError, match="ran"):
        measure(model, calib[:2], FEW, cache_dir=tmp_path)                               # new key: measured again
    assert Measurement.from_json(json.loads(json.dumps(m.to_json()))).error == m.error


def test_measure_rejects_a_group_size_that_does_not_divide(tiny, tmp_path):
    model, calib = tiny
    with pytest.raises(ValueError, match="does not divide"):
        measure(model, calib, [Setting(4, 96)], cache_dir=tmp_path)
    with pytest.raises(TypeError, match="Setting"):
        measure(model, calib, [(4, 128)], cache_dir=tmp_path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_equals_brute_force_and_beats_the_heuristics(seed):
    m = random_measurement(5, [Setting(2, 64), Setting(3, 64), Setting(4, 128), Setting(8, 128)], seed)
    low, high = A.feasible_range(m)
    for target in (low + 0.1 * (high - low), (low + high) / 2, low + 0.8 * (high - low)):
        exact = A.brute_force(m, target)
        dp, greedy, anneal = A.allocate_dp(m, target), A.allocate_greedy(m, target), A.allocate_annealing(m, target)
        assert dp.objective == pytest.approx(exact.objective, rel=1e-12)
        assert dp.method == "dynamic programming"
        for a in (dp, greedy, anneal):
            assert a.bpw <= target + 1e-12 and a.objective >= dp.objective - 1e-12


def test_greedy_can_miss_the_optimum_that_dp_finds():
    # the budget pays for upgrading a (saves 1.0) or b (saves 0.6 for half the bits), not both: greedy takes b's
    # better ratio first and then cannot afford a; the exact solution upgrades a
    m = Measurement(["a", "b"], [(128, 128), (64, 128)], [Setting(2, 128), Setting(8, 128)],
                    [[1.0, 0.0], [0.6, 0.0]])
    target = (Setting(8, 128).layer_bits(128, 128) + Setting(2, 128).layer_bits(64, 128)) / m.n_weights
    dp, greedy = A.allocate_dp(m, target, norm=1), A.allocate_greedy(m, target, norm=1)
    assert dp.objective == pytest.approx(0.6) and greedy.objective == pytest.approx(1.0)
    assert dp.choice == {"a": Setting(8, 128), "b": Setting(2, 128)}
    assert A.brute_force(m, target, norm=1).objective == pytest.approx(dp.objective)


def test_allocators_never_exceed_the_budget_on_a_larger_problem():
    m = random_measurement(40)
    for target in (2.5, 3.0, 3.5, 4.0, 4.65, 5.0, 6.0):
        dp = A.allocate_dp(m, target)
        coarse = A.allocate_dp(m, target, max_states=300)                  # costs rounded up: approximate
        greedy, anneal = A.allocate_greedy(m, target), A.allocate_annealing(m, target, steps=5000)
        assert "approximate" in coarse.method
        for a in (dp, coarse, greedy, anneal):
            assert a.bits <= target * m.n_weights and a.bpw <= target
            assert a.bits == sum(s.layer_bits(*shape) for s, shape in zip(a.choice.values(), m.shapes))
        assert dp.objective <= min(coarse.objective, greedy.objective, anneal.objective) + 1e-12
        assert anneal.objective <= 1.25 * dp.objective                      # a heuristic, not a bad one
    assert A.allocate_annealing(m, 4.0, seed=3).choice == A.allocate_annealing(m, 4.0, seed=3).choice


def test_budget_outside_the_feasible_range_gets_the_range():
    m = random_measurement(6)
    low, high = A.feasible_range(m)
    with pytest.raises(ValueError, match=rf"below.*feasible range is {low:.4f} to {high:.4f}"):
        A.allocate_dp(m, low - 0.01)
    with pytest.raises(ValueError, match=rf"above.*feasible range is {low:.4f} to {high:.4f}"):
        A.allocate_greedy(m, high + 0.5)
    with pytest.raises(TypeError, match="bits per weight"):
        A.allocate(m, "4.65")
    with pytest.raises(ValueError, match="Unknown method"):
        A.allocate(m, 4.0, method="genetic")
    assert A.allocate(m, low).bpw == pytest.approx(low) and A.allocate(m, high).bpw == pytest.approx(high)


def test_uniform_allocation_is_every_layer_at_one_setting():
    m = random_measurement(6)
    u = A.uniform(m, Setting(4, 128))
    assert set(u.choice.values()) == {Setting(4, 128)} and u.counts() == {"4b g128": 6}
    assert A.allocate_dp(m, u.bpw).objective <= u.objective
    with pytest.raises(ValueError, match="not measured"):
        A.uniform(m, Setting(7, 128))


def test_mixed_checkpoint_reloads_in_transformers_with_the_same_logits(tiny, tmp_path):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors writes the mixed checkpoint")
    from course_lib.mixed.checkpoint import (checkpoint_bits, config_groups, load_mixed_checkpoint,
                                             quantize_allocation, save_mixed_checkpoint)

    model, calib = tiny
    model = tiny_model("llama")
    settings = [Setting(3, 64), Setting(5, 128), Setting(8, 64)]
    m = measure(model, calib, settings, cache_dir=tmp_path)
    a = A.allocate_dp(m, 5.0)
    assert len(set(a.choice.values())) >= 2
    results = quantize_allocation(model, calib, a)
    assert {n: s for s, names in config_groups(results).items() for n in names} == a.choice
    ids = calib[:2]
    with torch.no_grad():
        ref = model(ids).logits
    out = save_mixed_checkpoint(model, results, tmp_path / "mixed")
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["num_bits"] for g in groups.values()) == sorted(s.bits for s in config_groups(results))
    assert checkpoint_bits(out)["bpw"] == pytest.approx(a.bpw, rel=1e-12)   # the count is what the file stores
    reloaded = load_mixed_checkpoint(out)
    with torch.no_grad():
        got = reloaded(ids).logits
    assert (got - ref).abs().max().item() < 1e-4 * ref.abs().max().item()


def test_allocation_for_another_model_is_refused(tiny, tmp_path):
    from course_lib.mixed.checkpoint import quantize_allocation

    model, calib = tiny
    m = random_measurement(3)
    with pytest.raises(ValueError, match="does not match this model's layers"):
        quantize_allocation(model, calib, A.allocate_dp(m, 4.0))
    with pytest.raises(TypeError, match="Allocation"):
        quantize_allocation(model, calib, {"x": Setting(4, 128)})
