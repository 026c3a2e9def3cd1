"""The short QAT fine-tune: deterministic, it learns, and baking leaves weights on the b-bit grid."""

import pytest
import torch

from course_lib.lm.models import linear_layers, tiny_model
from course_lib.quant.fake import FakeQuantLinear
from course_lib.quant.qat import QATConfig, distinct_values_per_group, qat_finetune, training_cost
from course_lib.lm.tokens import random_windows

VOCAB = 256


def stream(n: int = 4096, seed: int = 1) -> torch.Tensor:
    """A learnable token stream: a repeating pattern with some noise."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.arange(n) % 17
    noise = torch.randint(0, VOCAB, (n,), generator=gen)
    keep = torch.rand(n, generator=gen) < 0.9
    return torch.where(keep, base, noise)


CFG = QATConfig(bits=3, group_size=64, steps=12, batch_size=4, seq_len=32, lr=3e-3, warmup=2)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", vocab_size=VOCAB)


@pytest.fixture(scope="module")
def result(model):
    return qat_finetune(model, stream(), CFG)


def test_two_runs_are_identical(model, result):
    again = qat_finetune(model, stream(), CFG)
    assert again.losses() == result.losses()
    for (n1, p1), (n2, p2) in zip(result.model.named_parameters(), again.model.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_loss_decreases(result):
    losses = result.losses()
    assert len(losses) == CFG.steps and [r["step"] for r in result.log] == list(range(CFG.steps))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1


def test_baked_weights_lie_on_the_grid(model, result):
    assert not any(isinstance(m, FakeQuantLinear) for m in result.model.modules())
    assert all(type(m) is torch.nn.Linear for m in linear_layers(result.model).values())
    counts = distinct_values_per_group(result.model, CFG.group_size)
    assert set(counts) == set(linear_layers(model)) and len(result.layers) == len(counts)
    assert max(counts.values()) <= 2**CFG.bits
    # the float model has (nearly) all-distinct weights in each group: the check is not vacuous
    assert min(distinct_values_per_group(model, CFG.group_size).values()) > 2**CFG.bits


def test_original_model_untouched(model):
    before = {n: p.clone() for n, p in model.named_parameters()}
    qat_finetune(model, stream(), QATConfig(bits=4, group_size=64, steps=2, batch_size=2, seq_len=16, warmup=1))
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())


def test_plain_finetune_control_keeps_float_weights(model):
    cfg = QATConfig(bits=3, group_size=64, steps=3, batch_size=2, seq_len=16, warmup=1, fake_quant=False)
    res = qat_finetune(model, stream(), cfg)
    assert res.layers == []
    assert min(distinct_values_per_group(res.model, 64).values()) > 2**3


def test_lr_schedule_and_windows():
    cfg = QATConfig(steps=20, warmup=4, lr=1e-3, min_lr_ratio=0.1)
    lrs = [cfg.lr_at(s) for s in range(cfg.steps)]
    assert lrs[3] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    gen = torch.Generator().manual_seed(0)
    x = random_windows(torch.arange(100), 5, 10, gen)
    assert x.shape == (5, 10) and torch.equal(x[:, 1:] - x[:, :-1], torch.ones(5, 9, dtype=torch.long))


def test_cost_and_bad_config(result):
    cost = training_cost(result, {"tokens_seen": 16_384_000, "seconds": 125.0})
    assert cost["fine-tune tokens"] == CFG.steps * CFG.batch_size * CFG.seq_len
    assert cost["token fraction"] == pytest.approx(cost["fine-tune tokens"] / 16_384_000)
    with pytest.raises(ValueError, match="steps"):
        QATConfig(steps=0)
    with pytest.raises(ValueError, match="warmup"):
        QATConfig(steps=5, warmup=5)
    with pytest.raises(ValueError, match="longer than seq_len"):
        random_windows(torch.arange(10), 2, 10, torch.Generator())


def test_control_sweep_rejects_bad_learning_rates():
    from course_lib.quant.bench import control_rows

    for bad in ((), (0.0,), (1e-4, -1e-4)):
        with pytest.raises(ValueError, match="positive learning rates"):
            control_rows(bad)
