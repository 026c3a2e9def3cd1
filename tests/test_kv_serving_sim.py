"""The serving simulation: contiguous preallocation (Orca Max/Pow2/Oracle) against paging (vLLM)."""

from __future__ import annotations

import numpy as np
import pytest

from course_lib.kv import serving_sim as ss
from course_lib.kv.serving_sim import POLICIES, Request, compare, sample_requests, simulate

SLOTS = 20 * 2048


@pytest.fixture(scope="module")
def sharegpt():
    return sample_requests(400, "sharegpt", seed=0)


@pytest.fixture(scope="module")
def results(sharegpt):
    return {p: simulate(sharegpt, p, kv_slots=SLOTS) for p in POLICIES}


def test_every_request_finishes_within_the_budget(sharegpt, results):
    total = sum(r.output for r in sharegpt)
    for policy, res in results.items():
        assert res.tokens_generated == total, policy
        assert res.throughput == pytest.approx(total / res.steps)
        assert res.peak_slots <= res.kv_slots == SLOTS
        h = res.history
        assert len(h["batch"]) == res.steps
        assert (h["stored"] <= h["held"]).all() and (h["held"] <= SLOTS).all()
        parts = res.token_state_fraction + res.reserved_fraction + res.internal_fragmentation + res.free_fraction
        assert parts == pytest.approx(1.0)
        assert 0 < res.saturated_steps < res.steps
    # The budget is actually used: every policy fills it to within one request at some point.
    assert all(res.peak_slots > SLOTS - 2048 for res in results.values())


def test_paging_wins(results):
    paged = results["paged"]
    assert paged.utilization > 0.9
    assert all(paged.utilization > results[p].utilization for p in ("max", "pow2", "oracle"))
    assert paged.token_state_fraction > 0.9
    b = {p: r.mean_batch for p, r in results.items()}
    assert b["paged"] >= b["oracle"] >= b["pow2"] >= b["max"]
    assert b["max"] == pytest.approx(SLOTS // 2048)  # Orca (Max): exactly kv_slots / max_len requests
    assert results["paged"].steps < results["oracle"].steps < results["max"].steps
    assert results["oracle"].internal_fragmentation == 0  # it reserves the true length
    assert all(results[p].preemptions == 0 for p in ("max", "pow2", "oracle"))


def test_a_small_case_by_hand():
    # max_len 32, 64 slots: Orca (Max) runs two requests at a time.
    reqs = [Request(4, 3), Request(4, 5), Request(4, 2)]
    res = simulate(reqs, "max", kv_slots=64, block_size=4, max_len=32)
    # Steps 1-3: A and B (A finishes at 3). Steps 4-5: B and C.
    assert res.steps == 5 and res.history["batch"].tolist() == [2, 2, 2, 2, 2]
    assert res.saturated_steps == 3 and res.tokens_generated == 10
    # Step 1 stores A: 4+1, B: 4+1 tokens in 64 slots.
    assert res.history["stored"][0] == 10 and res.history["held"][0] == 64
    # Pow2 reserves prompt + the next power of two of the output (the paper: output 25 -> 32).
    seq = ss._Seq(Request(10, 25))
    assert ss._reservation("pow2", seq, 2048) == 42 and ss._reservation("pow2", seq, 40) == 40
    assert ss._reservation("oracle", seq, 2048) == 35 and ss._reservation("max", seq, 2048) == 2048
    # First come, first served: C would fit beside A but waits behind B, which does not.
    reqs = [Request(10, 10), Request(30, 2), Request(4, 4)]
    res = simulate(reqs, "oracle", kv_slots=40, block_size=4, max_len=32)
    assert res.history["batch"].tolist() == [1] * 10 + [2, 2, 1, 1]


def test_paged_preempts_the_newest_and_recomputes():
    # 4 blocks of 4 slots; two requests that each end at 16 tokens cannot both finish at once.
    reqs = [Request(4, 12), Request(4, 12)]
    res = simulate(reqs, "paged", kv_slots=16, block_size=4, max_len=16, watermark=0.0)
    # By hand: both run 4 steps (2 blocks each); at step 5 A needs a third block, so B (newest,
    # 4 tokens generated) is preempted. A finishes at step 12; B is re-admitted at step 13 with
    # its 4 + 4 tokens prefilled again (recompute) and needs 8 more steps.
    assert res.preemptions == 1 and res.recomputed_tokens == 8 and res.steps == 20
    assert res.history["batch"].tolist() == [2] * 4 + [1] * 16
    assert res.tokens_generated == 24 and res.peak_slots == 16
    # With room for both, nothing is preempted.
    reqs = [Request(5, 11), Request(5, 11)]
    res = simulate(reqs, "paged", kv_slots=32, block_size=4, max_len=16, watermark=0.0)
    assert res.preemptions == 0 and res.steps == 11
    # Blocks on demand: after step k each sequence stores 5 + k tokens in ceil((5 + k) / 4) blocks.
    assert res.history["stored"].tolist() == [2 * (5 + k) for k in range(1, 12)]
    assert res.history["held"].tolist() == [2 * 4 * -(-(5 + k) // 4) for k in range(1, 12)]


def test_sampled_means_match_the_paper():
    paper = ss.paper_numbers()["datasets"]
    for workload in ("sharegpt", "alpaca"):
        reqs = sample_requests(5000, workload, seed=0)
        prompt = np.array([r.prompt for r in reqs])
        output = np.array([r.output for r in reqs])
        assert prompt.mean() == pytest.approx(paper[workload]["input_mean"], rel=0.1)
        assert output.mean() == pytest.approx(paper[workload]["output_mean"], rel=0.1)
        assert prompt.min() >= 1 and output.min() >= 1 and (prompt + output).max() <= 2048
    short = sample_requests(500, "sharegpt", seed=0, max_len=256)
    assert max(r.prompt + r.output for r in short) <= 256


def test_deterministic_for_a_seed(sharegpt):
    assert sample_requests(400, "sharegpt", seed=0) == sharegpt
    assert sample_requests(400, "sharegpt", seed=1) != sharegpt
    a = simulate(sharegpt[:100], "paged", kv_slots=4 * 2048)
    b = simulate(sharegpt[:100], "paged", kv_slots=4 * 2048)
    assert a == b and (a.history["held"] == b.history["held"]).all()


def test_bad_input_is_refused_clearly(sharegpt):
    with pytest.raises(ValueError, match=r"Unknown policy 'lru'.*'max', 'pow2', 'oracle', 'paged'"):
        simulate(sharegpt, "lru", kv_slots=SLOTS)
    with pytest.raises(ValueError, match="cannot hold even one request of max_len=2048"):
        simulate(sharegpt, "paged", kv_slots=2000)
    with pytest.raises(ValueError, match="exceed max_len"):
        simulate([Request(30, 10)], "max", kv_slots=64, max_len=32)
    with pytest.raises(ValueError, match="Unknown workload"):
        sample_requests(10, "wikitext")
    with pytest.raises(ValueError, match=">= 1"):
        Request(0, 5)


def test_compare_rows_and_paper_numbers(sharegpt, results):
    rows = compare(sharegpt, kv_slots=SLOTS)
    assert [r["policy"] for r in rows] == ["Orca (Max)", "Orca (Pow2)", "Orca (Oracle)", "vLLM (paged)"]
    assert [r["mean_batch"] for r in rows] == [results[p].mean_batch for p in POLICIES]
    assert rows[0]["speedup_vs_max"] == 1 and rows[-1]["speedup_vs_max"] > 2
    assert [r["paper_token_states"] for r in rows] == pytest.approx([0.204, 0.268, 0.382, 0.963])
    fig2 = ss.paper_numbers()["kv_cache_usage_fig2"]
    for system in ("orca_max", "orca_pow2", "orca_oracle"):
        assert sum(x or 0 for x in fig2[system]) == pytest.approx(100, abs=0.2)
    data = ss.paper_numbers()
    assert data["arxiv"] == "2309.06180" and data["block_size_default"]["value"] == 16
    assert all("verified" in v for v in data.values() if isinstance(v, dict))
