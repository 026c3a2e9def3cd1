"""The unigram and bigram baselines (course_lib.pipeline.baselines) against the perplexity protocol."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from course_lib.pipeline import baselines
from course_lib.lm.perplexity import FAST, Protocol, perplexity
from course_lib.lm.tokens import token_stream


@cache
def tokenizer():
    from course_lib.lm.models import load_tokenizer

    return load_tokenizer()


def test_next_token_probabilities_sum_to_one():
    tok = tokenizer()
    unigram, bigram = baselines.fit(1, tok), baselines.fit(2, tok)
    unseen = int(torch.nonzero(bigram.context_counts == 0)[0])  # a context that never occurs in train
    frequent = int(bigram.context_counts.argmax())
    for lm in (unigram, bigram):
        for prev in (tok.eos_token_id, frequent, unseen, 1234):
            p = lm.next_token_probs(prev)
            assert p.shape == (len(tok),) and p.dtype == torch.float64
            assert (p > 0).all()
            assert abs(p.sum().item() - 1) < 1e-9, (lm.order, prev)
            # the vectorised scorer agrees with the full distribution
            nxt = torch.tensor([0, 7, 4095])
            nll = lm.token_nll(torch.full_like(nxt, prev), nxt)
            torch.testing.assert_close(nll, -torch.log(p[nxt]))
    assert 0 < bigram.lam < 1 and bigram.k == 1.0


def test_scored_positions_are_the_protocols():
    """Same token count as the model's scorer, on non-overlapping and on overlapping windows."""
    from course_lib.lm.models import tiny_model

    ids = token_stream("test", tokenizer())
    model = tiny_model("llama")  # random weights: only the count of scored tokens matters here
    short_fast = Protocol(max_tokens=2048)
    overlapping = Protocol(seq_len=128, stride=48, max_tokens=1500)
    for protocol in (short_fast, overlapping):
        expected = perplexity(model, None, protocol, stream=ids).tokens
        assert baselines.evaluate(baselines.fit(1, tokenizer()), ids, protocol).tokens == expected
    pos = baselines.scored_positions(len(ids), FAST)
    assert pos.numel() == 16320 and not torch.isin(torch.arange(0, 16384, 256), pos).any()
    pos = baselines.scored_positions(len(ids), overlapping)  # stride < seq_len: every token but the first, once
    assert torch.equal(pos, torch.arange(1, 1500))


@pytest.mark.slow
def test_unigram_worse_than_bigram_worse_than_model_on_fast():
    """Counting loses to the network (the model's FAST run takes ~6 s on 2 cores)."""
    from course_lib.lm.models import load_model

    tok = tokenizer()
    uni = baselines.ngram_perplexity(1, FAST, tok)
    bi = baselines.ngram_perplexity(2, FAST, tok)
    model, _ = load_model()
    lm = perplexity(model, tok, FAST)
    assert uni.tokens == bi.tokens == lm.tokens == 16320
    assert uni.ppl > bi.ppl > lm.ppl, (uni.ppl, bi.ppl, lm.ppl)


def test_deterministic():
    tok = tokenizer()
    train, test = token_stream("train", tok), token_stream("test", tok)
    a = baselines.evaluate(baselines.fit_stream(2, train, len(tok), k=1.0, lam=0.85), test, FAST)
    b = baselines.evaluate(baselines.fit_stream(2, train, len(tok), k=1.0, lam=0.85), test, FAST)
    assert a == b


def test_rejects_bad_settings():
    ids = torch.tensor([1, 2, 3, 1, 2])
    with pytest.raises(ValueError, match="order"):
        baselines.fit_stream(3, ids, 8, k=1.0)
    with pytest.raises(ValueError):
        baselines.fit_stream(2, ids, 8, k=0.0)
    with pytest.raises(ValueError, match="vocabulary"):
        baselines.fit_stream(1, ids, 3, k=1.0)
    with pytest.raises(ValueError, match="vocabulary"):
        baselines.evaluate(baselines.fit_stream(1, ids, 4, k=1.0), torch.tensor([1, 2, 9, 1]), Protocol(seq_len=4, stride=4))
