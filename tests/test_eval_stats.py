"""course_lib.eval: per-window losses equal the course protocol; bootstrap intervals and lm-eval's accuracies."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.eval import stats
from course_lib.eval.perplexity import (bits_per_byte, document_losses, position_losses, strided_losses,
                                        window_losses)
from course_lib.lm.models import tiny_model
from course_lib.lm.perplexity import Protocol, perplexity, windows


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return tiny_model("llama", vocab_size=128)


def test_window_losses_equal_the_protocol(tiny):
    stream = torch.randint(0, 128, (700,), generator=torch.Generator().manual_seed(1))
    for seq_len, stride in [(64, 64), (64, 16), (50, 33)]:
        p = Protocol(seq_len=seq_len, stride=stride, max_tokens=None)
        wl = window_losses(tiny, None, p, stream=stream, batch_size=3)
        ref = perplexity(tiny, None, p, stream=stream)
        n_windows = len(windows(700, seq_len, stride))
        # every token but the first, once; without overlap each later window's first token has no context
        assert wl.tokens == ref.tokens == 699 - (n_windows - 1 if stride == seq_len else 0)
        assert math.isclose(wl.ppl, ref.ppl, rel_tol=1e-9)
        assert len(wl.losses) == len(windows(700, seq_len, stride))
        assert torch.equal(wl.counts, torch.tensor([w.numel() for w in wl.losses], dtype=torch.float64))


def test_more_context_changes_the_number(tiny):
    stream = torch.randint(0, 128, (513,), generator=torch.Generator().manual_seed(2))
    grid = position_losses(tiny, stream, 64)
    assert grid.shape == (8, 63) and grid.dtype == torch.float64
    # the first column of each row is the window's second token: exactly what the non-overlapping protocol scores
    wl = strided_losses(tiny, stream[:512], 64, 64)
    assert torch.allclose(torch.cat(wl.losses), grid.flatten(), atol=1e-6)
    with pytest.raises(ValueError, match="fewer than one window"):
        position_losses(tiny, stream[:10], 64)


def test_bits_per_byte():
    assert bits_per_byte(math.log(2) * 10, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        bits_per_byte(1.0, 0)


def test_document_losses_score_every_token():
    from course_lib.lm.corpus import list_documents
    from course_lib.lm.models import load_model

    model, tok = load_model()
    rows = document_losses(model, tok, "test", max_docs=1, max_chars=2000, seq_len=64)
    text = list_documents("test")[0][1][:2000]
    text = text[: text.rfind("\n") + 1]  # whole lines
    # the eos in front gives the first token a context, and windows overlap by one: every token is scored
    assert rows[0]["tokens"] == len(tok(text)["input_ids"])
    assert rows[0]["bytes"] == len(text.encode("utf-8")) and rows[0]["nll_sum"] > 0


def _windows(n=40, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    counts = torch.full((n,), 255.0, dtype=torch.float64)
    difficulty = 3.5 + torch.rand(n, generator=g, dtype=torch.float64)  # windows differ a lot
    a = difficulty * counts
    b = (difficulty + 0.02 + noise * 0.01 * torch.randn(n, generator=g, dtype=torch.float64)) * counts
    return a, b, counts


def test_bootstrap_interval_contains_the_point_and_shrinks_with_more_windows():
    a, _, c = _windows(40)
    iv = stats.bootstrap_ppl(a, c)
    assert iv.lo < iv.point < iv.hi
    assert iv.point == pytest.approx(math.exp((a.sum() / c.sum()).item()))
    big_a, _, big_c = _windows(640)
    big = stats.bootstrap_ppl(big_a, big_c)
    assert (big.hi - big.lo) / big.point < 0.5 * (iv.hi - iv.lo) / iv.point  # about 1/4 for 16x the windows
    assert stats.bootstrap_ppl(a, c, seed=3) != iv and stats.bootstrap_ppl(a, c) == iv  # seeded


def test_paired_is_narrower_than_unpaired_and_gives_verdicts():
    a, b, c = _windows(40)
    paired = stats.paired_bootstrap(a, b, c)
    unpaired = stats.unpaired_bootstrap(a, b, c)
    assert paired.change == pytest.approx(math.exp(0.02) - 1, rel=0.1)
    assert paired.verdict == "B worse" and unpaired.verdict == "tie"
    assert (paired.hi - paired.lo) < 0.2 * (unpaired.hi - unpaired.lo)
    assert stats.paired_bootstrap(b, a, c).verdict == "B better"
    assert stats.paired_bootstrap(a, a + 0.0, c).verdict == "tie"


def test_bootstrap_errors():
    a, b, c = _windows(5)
    with pytest.raises(ValueError, match="one entry per window"):
        stats.bootstrap_ppl(a, c[:3])
    with pytest.raises(ValueError, match="at least 2 windows"):
        stats.bootstrap_ppl(a[:1], c[:1])
    with pytest.raises(ValueError, match="level"):
        stats.paired_bootstrap(a, b, c, level=95)
    with pytest.raises(ValueError, match="n_boot"):
        stats.bootstrap_ppl(a, c, n_boot=10)


def test_mc_accuracies_follow_lm_eval():
    choices = [["ab", "abcd", "éé"], ["x", "yy", "zzz"]]
    lls = torch.tensor([[-2.0, -3.2, -1.7], [-1.0, -1.0, -2.4]], dtype=torch.float64)
    pred = stats.mc_predictions(lls, choices)
    assert pred["acc"].tolist() == [2, 0]          # the highest log-likelihood; a tie goes to the first
    assert pred["acc_norm"].tolist() == [1, 1]     # per character: -1, -0.8, -0.85 and -1, -0.5, -0.8
    assert pred["acc_bytes"].tolist() == [2, 1]    # "éé" is 4 bytes: -1.7 / 4 = -0.425
    acc = stats.mc_accuracies(lls, choices, [1, 1])
    assert acc["acc"] == 0.0 and acc["acc_norm"] == 1.0 and acc["acc_bytes"] == 0.5
    assert acc["acc_norm_stderr"] == 0.0 and acc["acc_bytes_stderr"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="items, choices"):
        stats.mc_predictions(lls[:1], choices)


def test_mean_stderr_and_paired_accuracy():
    x = [1, 0, 1, 1]
    assert stats.mean_stderr(x) == pytest.approx((0.25 ** 0.5) / 2)  # sample std 0.5, n = 4
    d = stats.paired_accuracy([1, 1, 0, 0, 1, 1], [1, 0, 0, 0, 1, 1])
    assert d.point == pytest.approx(-1 / 6) and d.lo < d.point < d.hi
