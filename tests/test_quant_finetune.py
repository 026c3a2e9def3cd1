"""finetune(): the QAT loop without fake quantization, for uptraining (chapter 09) and QAT's control."""

import pytest
import torch

from course_lib.lm.models import linear_layers, tiny_model
from course_lib.quant.qat import QATConfig, finetune, qat_finetune

VOCAB = 256


def stream(n: int = 4096, seed: int = 1) -> torch.Tensor:
    """A learnable token stream: a repeating pattern with some noise."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, VOCAB, (n,), generator=gen)
    return torch.where(torch.rand(n, generator=gen) < 0.9, torch.arange(n) % 17, noise)


SETTINGS = dict(steps=8, batch_size=4, seq_len=32, lr=3e-3, warmup=2)


def test_finetune_is_plain_training_that_learns_and_copies():
    model = tiny_model("llama", vocab_size=VOCAB)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = finetune(model, stream(), **SETTINGS)
    assert res.config.fake_quant is False and res.layers == []  # nothing was fake-quantized
    assert res.losses()[-1] < res.losses()[0]  # it learns
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the input model is untouched
    # exactly qat_finetune with fake_quant=False: same losses, same weights
    ref = qat_finetune(model, stream(), QATConfig(fake_quant=False, **SETTINGS))
    assert res.losses() == ref.losses()
    w, w_ref = linear_layers(res.model), linear_layers(ref.model)
    assert all(torch.equal(w[n].weight, w_ref[n].weight) for n in w)
    # the weights are free floats, not on a quantization grid: many distinct values per row
    q = next(iter(w.values())).weight
    assert min(len(set(row.tolist())) for row in q) > 16


def test_finetune_rejects_quantization_settings():
    with pytest.raises(ValueError, match="qat_finetune"):
        finetune(tiny_model("llama", vocab_size=VOCAB), stream(), bits=3)
    with pytest.raises(ValueError, match="warmup"):
        finetune(tiny_model("llama", vocab_size=VOCAB), stream(), steps=3)  # the default warm-up of 5 > 3 steps
