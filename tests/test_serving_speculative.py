"""Speculative decoding: the acceptance rule keeps the target's distribution; greedy speculation is the target's
greedy output (and transformers' assisted generation); the draft model and the serving benchmark's small runs."""

from __future__ import annotations

import pytest
import torch

from course_lib.lm.models import load_model, tiny_model
from course_lib.serving.draft import load_draft
from course_lib.serving.speculative import (accept_step, greedy_generate, speculative_generate, verify_greedy,
                                            verify_sampled)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair():
    model, tok = load_model(dtype=torch.float32)
    return model, load_draft(), tok


def test_verify_greedy_accepts_the_agreeing_prefix():
    logits = torch.full((4, 5), -1.0)
    for i, t in enumerate([2, 3, 0, 4]):
        logits[i, t] = 1.0
    assert verify_greedy(torch.tensor([2, 3, 1]), logits) == [2, 3, 0]     # third draft rejected: correction 0
    assert verify_greedy(torch.tensor([2, 3, 0]), logits) == [2, 3, 0, 4]  # all accepted: bonus token 4
    assert verify_greedy(torch.tensor([1, 3, 0]), logits) == [2]


def test_accept_step_cases():
    q = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    p = torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], dtype=torch.float64)
    n, dist = accept_step(torch.tensor([0, 2]), q, p, torch.tensor([0.4, 0.9], dtype=torch.float64))
    # token 0 at row 0: p/q = 0.5, u = 0.4 < 0.5: accepted; row 1: p == q: accepted -> bonus from p[2]
    assert n == 2 and torch.equal(dist, p[2])
    n, dist = accept_step(torch.tensor([0, 2]), q, p, torch.tensor([0.6, 0.0], dtype=torch.float64))
    assert n == 0 and torch.allclose(dist, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))  # norm(max(0, p - q))


def test_sampled_rule_keeps_the_target_distribution():
    gen = torch.Generator().manual_seed(0)
    q = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.1]])
    p = torch.tensor([[0.1, 0.3, 0.3, 0.2, 0.1], [0.2] * 5])
    counts = torch.zeros(5)
    n = 20000
    for _ in range(n):
        d = torch.multinomial(q[0], 1, generator=gen)
        counts[verify_sampled(d, q, p, gen)[0]] += 1
    # 4 standard errors of a binomial proportion at n = 20000 are below 0.013
    assert torch.allclose(counts / n, p[0], atol=0.013)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_speculation_is_the_target_greedy_output(pair, k):
    model, draft, tok = pair
    prompt = tok.encode("It was a dark and stormy night; the rain fell in torrents, and")
    spec = speculative_generate(model, draft, prompt, 40, k=k)
    assert spec.tokens == greedy_generate(model, prompt, 40).tokens
    assert spec.target_passes < 40 and 0 < spec.acceptance_rate <= 1
    assert sum(spec.per_round) >= 40 and spec.accepted == sum(spec.per_round) - spec.rounds


def test_matches_transformers_assisted_generation(pair):
    model, draft, tok = pair
    prompt = tok.encode("Friends, Romans, countrymen, lend me your ears;")
    ours = speculative_generate(model, draft, prompt, 30, k=4).tokens
    hf = model.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, assistant_model=draft,
                        pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == hf


def test_draft_is_the_distilled_student(pair):
    model, draft, _ = pair
    assert draft.config.vocab_size == model.config.vocab_size
    assert sum(p.numel() for p in draft.parameters()) < 0.3 * sum(p.numel() for p in model.parameters())


def test_a_draft_with_another_vocabulary_is_refused(pair):
    model, _, _ = pair
    other = tiny_model("llama", vocab_size=1000)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(model, other, [1, 2, 3], 4)


def test_speculative_bench_rows():
    from course_lib.serving.bench import bench_speculative

    rows = bench_speculative(torch.device("cpu"), prompts=2, new_tokens=12, ks=(2,))
    assert [r["method"] for r in rows] == ["greedy, target alone", "greedy, draft alone", "speculative, greedy"]
    assert rows[2]["identical"] is True and 1 < rows[2]["tokens/pass"] <= 3
