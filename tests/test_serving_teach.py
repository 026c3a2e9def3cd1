"""course_lib.serving.teach: the admission plan on plain integers is what a real Engine admits in one step."""

from __future__ import annotations

import pytest

from course_lib.serving import Engine, EngineConfig, SamplingParams
from course_lib.serving.blocks import blocks_needed
from course_lib.serving.teach import admission_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundled():
    from course_lib.lm.models import load_model

    return load_model(device="cpu")


def prompt(length: int, start: int = 10) -> list[int]:
    return list(range(start, start + length))


def engine_admits(bundled, lengths, *, num_blocks, block_size, budget, max_seqs, running=()):
    """(the plan from the engine's state, what Engine.schedule admits): `running` prompts are served one step
    first (they are then running and decode one token each), then `lengths` wait."""
    model, tok = bundled
    engine = Engine(model, tok, EngineConfig(num_blocks=num_blocks, block_size=block_size,
                                             max_num_batched_tokens=budget, max_num_seqs=max_seqs,
                                             enable_prefix_caching=False))
    for n in running:
        engine.add_request(prompt(n, 500), SamplingParams(max_tokens=8, ignore_eos=True))
    if running:
        engine.step()
        assert len(engine.running) == len(running) and not engine.waiting
        assert all(r.num_computed == r.num_tokens - 1 for r in engine.running)  # prefilled: each decodes 1 token
    ids = [engine.add_request(prompt(n), SamplingParams(max_tokens=1)) for n in lengths]
    # what the running requests leave: one token of budget each, and the blocks their next token needs
    left_budget = budget - len(engine.running)
    left_blocks = engine.blocks.num_free - sum(blocks_needed(r.num_computed + 1, block_size) - len(r.blocks)
                                               for r in engine.running)
    plan = admission_plan(lengths, left_blocks, block_size, left_budget, max_seqs, len(engine.running))
    scheduled, admitted, preempted = engine.schedule()
    assert not preempted
    new = {r.request_id: n for r, n in scheduled if r.request_id in ids}
    assert list(new) == admitted
    return [(ids.index(rid), new[rid]) for rid in admitted], plan


SCENARIOS = {
    # the budget ends inside request 2's prompt: it is admitted with a chunk of 4 tokens
    "budget-limited chunk": (dict(lengths=[7, 9, 12, 5], num_blocks=64, block_size=4, budget=20, max_seqs=8),
                             [(0, 7), (1, 9), (2, 4)]),
    # request 1 needs 4 blocks, 3 are free: it stops the walk although request 2 (1 block) would fit
    "block-limited stop": (dict(lengths=[9, 13, 3], num_blocks=6, block_size=4, budget=256, max_seqs=8), [(0, 9)]),
    # request 1's chunk (8 tokens) needs 2 blocks where its whole prompt would need 8
    "a chunk's blocks": (dict(lengths=[4, 29], num_blocks=8, block_size=4, budget=12, max_seqs=8),
                         [(0, 4), (1, 8)]),
    "max_seqs-limited": (dict(lengths=[3, 3, 3, 3], num_blocks=32, block_size=4, budget=64, max_seqs=2),
                         [(0, 3), (1, 3)]),
    # two requests decode; max_seqs 3 leaves room for one more, in a budget 2 tokens smaller
    "max_seqs with requests running": (dict(lengths=[6, 6], num_blocks=32, block_size=4, budget=16, max_seqs=3,
                                            running=(5, 9)), [(0, 6)]),
    # two requests decode (2 tokens of 10); the first waiting prompt gets the other 8 as a chunk
    "budget left by running requests": (dict(lengths=[30, 2], num_blocks=32, block_size=4, budget=10, max_seqs=8,
                                             running=(3, 4)), [(0, 8)]),
    # two requests decode, the one at 8 tokens into a new block: 8 - 2 - 2 - 1 = 3 blocks left, request 0 needs 3
    "blocks left by running requests": (dict(lengths=[12, 1], num_blocks=8, block_size=4, budget=64, max_seqs=8,
                                             running=(8, 7)), [(0, 12)]),
    "everything fits": (dict(lengths=[5, 17, 2], num_blocks=32, block_size=16, budget=256, max_seqs=8),
                        [(0, 5), (1, 17), (2, 2)]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_plan_is_what_the_engine_admits(bundled, name):
    kwargs, expected = SCENARIOS[name]
    admitted, plan = engine_admits(bundled, **kwargs)
    assert admitted == plan == expected


def test_the_plan_stops_at_the_first_request_that_does_not_fit():
    assert admission_plan([9, 13, 3], 6, 4, 256, 8, 0) == [(0, 9)]
    assert admission_plan([9, 13, 3], 7, 4, 256, 8, 0) == [(0, 9), (1, 13)]


def test_the_plan_on_nothing():
    assert admission_plan([], 10, 4, 100, 8, 0) == []
    assert admission_plan([5], 10, 4, 0, 8, 0) == []           # the running requests spent the budget
    assert admission_plan([5], 10, 4, 100, 2, 2) == []         # the batch is full
    assert admission_plan([5], 0, 4, 100, 8, 0) == []          # no free block
