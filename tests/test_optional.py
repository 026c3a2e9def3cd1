"""course_lib.core.optional: a missing library gets one line and the canonical run's recording."""

import json

import pytest

from course_lib.core import optional


def test_missing_and_have():
    assert optional.missing("json", "no_such_module_xyz", "os") == ["no_such_module_xyz"]
    assert optional.have("json") and not optional.have("json", "no_such_module_xyz")


def test_install_hint_names_pip_package_and_extra():
    hint = optional.install_hint(["lm_eval", "gptqmodel"])
    assert hint.startswith("pip install lm-eval gptqmodel") and "[compress,eval]" in hint
    line = optional.missing_line(["gptqmodel"], "GPTQModel's run")
    assert "gptqmodel is not installed" in line and "GPTQModel's run did not run here" in line


@pytest.fixture
def recordings(tmp_path, monkeypatch):
    monkeypatch.setattr(optional, "RECORDED_DIR", tmp_path)
    return tmp_path


def test_live_run_records_only_under_make_outputs(recordings, monkeypatch):
    monkeypatch.delenv("COURSE_RECORD", raising=False)
    assert optional.live_or_recorded("k", lambda: {"a": (1, 2)}, needs=["json"], what="x") == {"a": [1, 2]}
    assert not (recordings / "k.json").exists()  # nbval's replay never rewrites a recording
    monkeypatch.setenv("COURSE_RECORD", "1")
    optional.live_or_recorded("k", lambda: {"a": 3}, needs=["json"], what="x")
    assert json.loads((recordings / "k.json").read_text())["result"] == {"a": 3}


def test_missing_library_prints_one_line_and_returns_the_recording(recordings, capsys):
    (recordings / "k.json").write_text(json.dumps({"result": [{"ppl": 44.5}]}))

    def must_not_run():
        raise AssertionError("run() called without its library")

    out = optional.live_or_recorded("k", must_not_run, needs=["no_such_module_xyz"], what="the tool's run")
    assert out == [{"ppl": 44.5}]
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "no_such_module_xyz is not installed" in printed[0] and "recorded" in printed[0]
    with pytest.raises(FileNotFoundError, match="make outputs"):
        optional.live_or_recorded("absent", must_not_run, needs=["no_such_module_xyz"], what="x")


def test_every_recording_has_its_result():
    files = sorted(optional.RECORDED_DIR.glob("*.json"))
    assert files, "no recordings: run `make outputs`"
    for path in files:
        data = json.loads(path.read_text())
        assert data["key"] == path.stem and "result" in data and data["needs"]
