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


def test_record_quant_time_runs_the_rows_and_saves_the_command_that_made_them(monkeypatch):
    from course_lib.gptq import bench as gbench

    saved = {}
    monkeypatch.setattr(gbench, "save_result", lambda name, rows, **kw: saved.update(name=name, rows=rows, **kw))
    calls = []

    def rows_fn(device, bits, tools, repeats):
        calls.append((device, bits, tools, repeats))
        return [{"tool": t} for t in tools]

    gbench.record_quant_time("awq", rows_fn, ("a", "b"), "desc", "cpu", (4,), None, None, 2, None)
    assert calls == [("cpu", (4,), ("a", "b"), 2)] and saved["rows"] == [{"tool": "a"}, {"tool": "b"}]
    assert saved["name"] == "cpu_awq_time" and saved["description"] == "desc"
    assert saved["command"] == ("python -m course_lib.bench awq-time --device cpu --bits 4 --tools a b --repeats 2 "
                                "--name cpu_awq_time")
