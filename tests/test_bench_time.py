"""course_lib.bench gptq-time / awq-time: argument checks (the timings themselves are recorded in data/results/)."""

from __future__ import annotations

import pytest

from course_lib import bench
from course_lib.awq.bench import AWQ_TOOLS, awq_time_rows
from course_lib.gptq.bench import GPTQ_TOOLS, gptq_time_rows, tool_time_rows


@pytest.mark.parametrize("rows_fn, bad", [(gptq_time_rows, "autogptq"), (awq_time_rows, "autoawq")])
def test_unknown_tools_are_named(rows_fn, bad):
    with pytest.raises(ValueError, match=f"unknown tools \\['{bad}'\\]"):
        rows_fn("cpu", (4,), ("course_lib", bad))


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        tool_time_rows(lambda *a: None, ("course_lib",), (4,), device="cpu", repeats=0, group_size=128,
                       tokenizer=None)


def test_cli_offers_each_method_its_own_tools(capsys):
    with pytest.raises(SystemExit):
        bench.main(["awq-time", "--tools", "course_lib-one-pass"])   # a GPTQ-only variant
    assert "invalid choice" in capsys.readouterr().err
    assert "course_lib-one-pass" in GPTQ_TOOLS and "course_lib-one-pass" not in AWQ_TOOLS


def test_best_of_interleaved_runs_in_turn_and_keeps_the_best():
    import time

    from course_lib.core.timing import best_of_interleaved

    calls = []
    fns = {"fast": lambda: calls.append("fast"), "slow": lambda: (calls.append("slow"), time.sleep(0.01))}
    best = best_of_interleaved(fns, repeats=3, warmup=1)
    assert calls == ["fast", "slow"] + ["fast", "slow"] * 3  # warm-up, then interleaved rounds
    assert best["slow"] >= 0.01 > best["fast"]
    with pytest.raises(ValueError, match="repeats"):
        best_of_interleaved(fns, repeats=0)
