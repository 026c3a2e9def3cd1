"""Reading the recorded W4A16 benchmark (course_lib.kernels.w4a16_report): the tables, the targets' verdicts
and the prefill crossover computed from rows, on the H200 recording and on made-up rows that flip each verdict."""

from __future__ import annotations

from dataclasses import replace

import pytest

from course_lib.kernels import w4a16 as W
from course_lib.kernels import w4a16_report as R


@pytest.fixture(scope="module")
def rec():
    return R.load_w4a16()


def _step(batch: int, speedup: float) -> list[dict]:
    base = dict(batch=batch, dtype="float16", projections="separate", gbps=1.0, share_of_copy_bw=0.5,
                ideal_speedup_from_bytes=3.8)
    return [dict(base, method="fp16 cuBLAS", ms=4.0, speedup_vs_fp16=1.0),
            dict(base, method="course fused (tuned)", ms=4.0 / speedup, speedup_vs_fp16=speedup)]


def test_the_recording_has_every_part(rec):
    assert {"ladder", "per_linear", "fused", "bf16", "prefill", "end_to_end"} <= set(rec.summary)
    batches = R.batch_speedups(rec)
    assert [r["batch"] for r in batches] == [1, 2, 4, 8, 16]
    assert all(r["fused qkv, gate_up"] is not None and 3.7 < r["bytes allow"] < 3.9 for r in batches)
    assert len(R.per_linear_table(rec, batch=1)) == 7 and len(R.per_linear_table(rec, batch=16)) == 7
    assert {r["step"] for r in R.ladder_table(rec, 1)} == {r["step"] for r in R.ladder_table(rec, 16)}


def test_targets_take_the_better_layout_and_can_be_met(rec):
    missed = R.targets(rec)
    assert [r["batch"] for r in missed] == sorted(R.TARGETS) and not any(r["met"] for r in missed)
    assert missed[0]["measured (best layout)"] == pytest.approx(rec.summary["fused"][1]["speedup_vs_fp16"])
    fast = replace(rec, rows=_step(1, 3.2) + _step(8, 2.4) + _step(16, 2.6), summary={"fused": _step(8, 2.55)})
    verdict = {r["batch"]: r["met"] for r in R.targets(fast)}
    assert verdict == {1: True, 8: True, 16: True}   # 8: the fused layout's 2.55 counts
    slow = replace(fast, summary={})
    assert {r["batch"]: r["met"] for r in R.targets(slow)} == {1: True, 8: False, 16: True}


def test_prefill_crossovers(rec):
    got = R.prefill_crossovers(rec)
    assert got["fused slower than fp16 from"] == 4 and got["dequant + cuBLAS faster than fused from"] == 1024
    assert got["fused slower than fp16 from"] <= W.FUSED_MAX_TOKENS < got["dequant + cuBLAS faster than fused from"]
    rows = [dict(tokens=t, fp16_us=10.0, fused_us=f, dequant_cublas_us=d, faster_4bit_path="")
            for t, f, d in ((1, 5.0, 50.0), (8, 9.0, 50.0), (64, 60.0, 50.0))]
    made = replace(rec, summary={"prefill": rows})
    assert R.prefill_crossovers(made) == {"fused slower than fp16 from": 64, "dequant + cuBLAS faster than fused from": 64}
    never = replace(rec, summary={"prefill": rows[:2]})
    assert R.prefill_crossovers(never) == {"fused slower than fp16 from": None, "dequant + cuBLAS faster than fused from": None}


def test_end_to_end_and_bf16_tables(rec):
    e2e = R.end_to_end_table(rec)
    assert e2e[0]["speedup"] == 1.0 and 1.0 < e2e[1]["speedup"] < e2e[1]["bytes allow"]
    assert {r["method"] for r in R.bf16_table(rec)} == {"bf16 cuBLAS", "course fused (tuned)", "torch int4 (tinygemm)"}


def test_interpreter_failure_is_reported():
    pytest.importorskip("triton", reason="Triton has wheels for Linux x86_64 only")
    with pytest.raises(RuntimeError, match="interpreter"):
        R.run_interpreted(k=256, n=64, m=3, group_size=48)  # 48 does not divide 256: the child's ValueError
