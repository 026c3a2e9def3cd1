import json

import pytest
import torch

from course_lib.core import results


def test_save_then_load_round_trips(tmp_path):
    rows = [{"tokens": 1, "time_us": 10.0}, {"tokens": 2, "time_us": 11.0}]
    path = results.save_result("demo", rows, description="d", command="c", summary={"x": 1}, directory=tmp_path)
    rec = results.load_result("demo", directory=tmp_path)
    assert path.name == "demo.json"
    assert rec.rows == rows and rec.summary == {"x": 1}
    assert rec.versions["torch"] == torch.__version__
    assert len(rec.date) == 10 and rec.column("tokens") == [1, 2]
    with pytest.raises(KeyError, match="nope"):
        rec.column("nope")


def test_missing_and_malformed_results_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="make bench"):
        results.load_result("absent", directory=tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad"}))
    with pytest.raises(ValueError, match="lacks"):
        results.load_result("bad", directory=tmp_path)
    with pytest.raises(ValueError, match="no rows"):
        results.save_result("empty", [], description="", command="", directory=tmp_path)


def test_show_result_prints_recording_and_never_fakes_live(tmp_path, capsys):
    results.save_result("demo", [{"n": 1, "t": 2.0}], description="desc", command="c", directory=tmp_path)
    rec = results.load_result("demo", directory=tmp_path)
    calls = []
    results.show_result(rec, key=["n"], live=lambda: calls.append(1) or [{"n": 1, "t": 3.0}])
    out = capsys.readouterr().out
    assert "Recorded on" in out and "desc" in out
    if torch.cuda.is_available():
        assert calls and "live" in out
    else:
        assert not calls and "nothing was measured live" in out


def test_merge_live_lines_rows_up_by_key():
    merged = results.merge_live([{"n": 1, "t": 2.0}, {"n": 2, "t": 4.0}], [{"n": 2, "t": 5.0}], ["n"], ["t"])
    assert merged == [{"n": 1, "t rec": 2.0, "t live": None}, {"n": 2, "t rec": 4.0, "t live": 5.0}]


def test_committed_results_are_well_formed():
    files = sorted(results.RESULTS_DIR.glob("*.json"))
    assert files, "data/results/ should hold the recorded GPU results"
    for path in files:
        rec = results.load_result(path)
        assert rec.name == path.stem and rec.rows
        assert "torch" in rec.versions


def test_recorded_model_eval_agrees_with_the_card_and_the_cpu():
    """The bundled model scored in bf16 on the H100 and in fp32 on its CPU (python -m course_lib.bench model-eval)."""
    rec = results.load_result("h100_course_model_eval")
    gpu, cpu = (next(r for r in rec.rows if r["device"] == d) for d in ("cuda", "cpu"))
    assert gpu["dtype"] == "bfloat16" and cpu["dtype"] == "float32"
    assert f"{cpu['ppl_full_test']:.2f}" == "41.39" and f"{cpu['ppl_fast']:.2f}" == "44.29"  # the card's numbers
    for key in ("ppl_fast", "ppl_full_test", "ppl_full_validation", "bits_per_byte"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-3), key  # bf16 on the GPU changes the 4th digit at most
    assert gpu["acc_mutual_info"] > 0.45 and cpu["acc_mutual_info"] > 0.45  # well above chance (0.25)
