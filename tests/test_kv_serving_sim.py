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


# ----------------------------------------------------------------------------- buddy allocator, arrivals, step time
def test_buddy_allocator_rounds_splits_and_merges():
    from course_lib.kv.buddy import BuddyAllocator, block_size_for

    assert [block_size_for(n) for n in (1, 2, 3, 25, 32, 33, 600)] == [1, 2, 4, 32, 32, 64, 1024]
    b = BuddyAllocator(15_700, 2048)  # 7 x 2048, then 1024, 256, 64, 16, 4: aligned pieces
    assert {size: len(a) for size, a in b.free_blocks.items()} == {2048: 7, 1024: 1, 256: 1, 64: 1, 16: 1, 4: 1}
    assert sum(size * len(a) for size, a in b.free_blocks.items()) == 15_700
    a = b.allocate(600)  # a 1024 block: the free 1024 piece first (lowest address among the smallest that fit)
    assert a == 14 * 1024 and b.slots_in_use == 1024
    c, d = b.allocate(100), b.allocate(100)  # 128 each: the 256 piece split into two buddies
    assert {c, d} == {15_360, 15_360 + 128} and not b.free_blocks.get(256)
    b.free(c)
    b.free(d)  # the buddies merge back into the 256 piece...
    assert b.free_blocks[256] == {15_360} and 15_360 + 128 not in b.free_blocks.get(128, set())
    b.free(a)
    assert b.free_blocks[1024] == {14_336}  # ...and never across pieces: 1024 + 256 stay apart
    small = BuddyAllocator(8, 8)
    assert small.allocate(5) == 0 and small.allocate(1) is None  # 5 slots take the whole 8-slot block
    with pytest.raises(ValueError, match="No allocated block"):
        small.free(3)
    with pytest.raises(ValueError, match="largest block"):
        small.allocate(9)
    with pytest.raises(ValueError, match="power-of-two"):
        BuddyAllocator(100, 48)


def test_buddy_rounding_costs_the_contiguous_policies_batch(sharegpt, results):
    buddy = {p: simulate(sharegpt, p, kv_slots=SLOTS, allocator="buddy") for p in ("max", "pow2", "oracle")}
    assert buddy["max"].mean_batch == results["max"].mean_batch  # 2048 is a power of two: nothing changes
    for p in ("pow2", "oracle"):
        r = buddy[p]
        assert r.mean_batch < 0.85 * results[p].mean_batch
        assert r.allocator_fraction > 0.1  # blocks rounded up to powers of two
        parts = (r.token_state_fraction + r.reserved_fraction + r.internal_fragmentation + r.allocator_fraction
                 + r.free_fraction)
        assert parts == pytest.approx(1.0)
    with pytest.raises(ValueError, match="paging allocates fixed blocks"):
        simulate(sharegpt, "paged", kv_slots=SLOTS, allocator="buddy")


def test_arrivals_and_step_time_by_hand():
    # Two requests; the second arrives at t=10, long after the first has finished (3 steps of 1 s).
    reqs = [Request(4, 3), Request(4, 2)]
    res = simulate(reqs, "oracle", kv_slots=64, block_size=4, max_len=32, arrivals=[0.0, 10.0],
                   step_time=lambda batch, cached, prefill: 1.0)
    assert res.steps == 5 and res.duration == 12.0  # idle from 3 to 10, then 2 steps
    assert res.normalized_latency == pytest.approx((3 / 3 + 2 / 2) / 2)  # (finish - arrival) / output, averaged
    assert res.history["batch"].tolist() == [1, 1, 1, 1, 1]
    # The roofline: weights and cached K/V read once per step, plus the prefill's FLOPs.
    t = ss.StepTime()
    assert t(1, 0, 0) == pytest.approx(26e9 / 1.555e12)
    assert t(8, 1000, 0) - t(8, 0, 0) == pytest.approx(1000 * 819_200 / 1.555e12)
    assert t(1, 0, 100) - t(1, 0, 0) == pytest.approx(100 * 26e9 / 312e12)
    with pytest.raises(ValueError, match="non-decreasing"):
        simulate(reqs, "oracle", kv_slots=64, block_size=4, max_len=32, arrivals=[5.0, 1.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        simulate(reqs, "oracle", kv_slots=64, block_size=4, max_len=32, arrivals=[0.0])


def test_poisson_arrivals():
    a = ss.poisson_arrivals(4000, 2.0, seed=0)
    assert a == ss.poisson_arrivals(4000, 2.0, seed=0) != ss.poisson_arrivals(4000, 2.0, seed=1)
    assert all(y > x for x, y in zip(a, a[1:]))
    assert a[-1] / len(a) == pytest.approx(0.5, rel=0.05)  # mean gap 1 / rate
    with pytest.raises(ValueError, match="positive rate"):
        ss.poisson_arrivals(10, 0.0)


def test_compare_beside_figures_2_and_13(sharegpt):
    results = ss.simulate_policies(sharegpt[:150], kv_slots=SLOTS, allocator="buddy")
    rows = compare(sharegpt[:150], kv_slots=SLOTS, results=results)
    assert [r["paper_batch"] for r in rows] == [7.00, 9.81, 13.62, 30.42]
    assert [r["paper_other"] for r in rows] == pytest.approx([0.089, 0.416, 0.366, 0.0])
    assert [r["mean_batch"] for r in rows] == [results[p].mean_batch for p in POLICIES]
    for r, p in zip(rows, POLICIES):
        assert r["other"] == pytest.approx(results[p].allocator_fraction + results[p].free_fraction)
