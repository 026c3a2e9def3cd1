import math
from types import SimpleNamespace

import pytest
import torch

from course_lib.lm import perplexity as P
from course_lib.lm.models import load_tokenizer
from course_lib.lm.tokens import calibration_batches, token_stream


class Uniform(torch.nn.Module):
    """A 'model' whose logits are all equal: its perplexity is exactly the vocabulary size."""

    def __init__(self, vocab=50, positions=64):
        super().__init__()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=positions)

    def forward(self, input_ids):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.anchor)


@pytest.mark.parametrize("n, seq_len, stride", [(1000, 64, 64), (1000, 64, 16), (65, 64, 64), (64, 64, 1), (130, 32, 31)])
def test_windows_score_each_token_at_most_once(n, seq_len, stride):
    scored = []
    spans = P.windows(n, seq_len, stride)
    for begin, end, first in spans:
        assert end - begin <= seq_len
        scored += range(max(first, begin + 1), end)
    assert len(scored) == len(set(scored)) and 0 not in scored
    if stride < seq_len:
        assert sorted(scored) == list(range(1, n))  # overlapping windows score everything but token 0
    else:  # each window's first token has no context
        assert sorted(scored) == [t for t in range(1, n) if t % stride]


def test_bad_protocols():
    with pytest.raises(ValueError, match="stride"):
        P.windows(100, 10, 11)
    with pytest.raises(ValueError, match="positions"):
        P.perplexity(Uniform(positions=16), None, P.Protocol(seq_len=32), stream=torch.arange(100) % 50)


def test_uniform_model_has_perplexity_equal_to_vocab():
    stream = torch.randint(0, 50, (500,), generator=torch.Generator().manual_seed(0))
    for stride in (64, 20):
        r = P.perplexity(Uniform(), None, P.Protocol(seq_len=64, stride=stride, max_tokens=None), stream=stream)
        assert r.ppl == pytest.approx(50, rel=1e-6) and r.nll == pytest.approx(math.log(50))


def test_token_streams_and_calibration_batches():
    tok = load_tokenizer()
    stream = token_stream("calibration", tok)
    assert stream.dtype == torch.long and stream[-1].item() == tok.eos_token_id and len(stream) > 30_000
    a = calibration_batches(tok, n_samples=8, seq_len=64, seed=1)
    b = calibration_batches(tok, n_samples=8, seq_len=64, seed=1)
    c = calibration_batches(tok, n_samples=8, seq_len=64, seed=2)
    assert a.shape == (8, 64) and torch.equal(a, b) and not torch.equal(a, c)
    joined = stream.tolist()
    first = a[0].tolist()
    assert any(joined[i : i + 64] == first for i in range(len(joined) - 63))  # a real window of the split
    with pytest.raises(ValueError, match="longer"):
        calibration_batches(tok, n_samples=1, seq_len=10**7)
    with pytest.raises(ValueError, match="positive"):
        calibration_batches(tok, n_samples=0)
