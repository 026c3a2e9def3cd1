"""The course's lm-evaluation-harness tasks (course_lib.lm.eval_tasks, data/lm_eval).

The data tests read the committed files and the corpus; the evaluation tests run lm-eval on the
bundled model and on a tiny random one; the slow ones score the whole multiple-choice task and run
the real ``lm_eval`` command line offline (and, where ``unshare -n`` works, with no network at all).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from course_lib.lm import eval_tasks as lt
from course_lib.lm.corpus import load_split, parse_documents
from course_lib.core.env import REPO_ROOT

pytest.importorskip("lm_eval")

SMALL_LIMIT = 4


@cache
def works() -> dict[str, str]:
    return {doc_id: text for doc_id, _, text in parse_documents(load_split("test"))}


@cache
def other_splits_text() -> str:
    return "\n".join(load_split(name) for name in ("train", "calibration"))


@cache
def bundled():
    from course_lib.lm.models import load_model

    return load_model(device="cpu")  # float32: the CLI test compares with the command line on CPU


@cache
def api_scores_small() -> dict:
    model, tok = bundled()
    return lt.evaluate(model, tok, limit=SMALL_LIMIT)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# --- the data ------------------------------------------------------------------------------


def test_data_files_exist_and_rebuild_byte_identical(tmp_path):
    committed = sorted(p.name for p in lt.TASK_DIR.iterdir() if p.is_file())
    expected = [f"{t}.{ext}" for t in lt.TASKS for ext in ("jsonl", "yaml")]
    assert set(expected + [f"{lt.LOADER_MODULE}.py", "manifest.json"]) <= set(committed)
    lt.build(tmp_path)
    rebuilt = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert rebuilt == committed, "data/lm_eval has files the builder does not write"
    for name in committed:
        assert (tmp_path / name).read_bytes() == (lt.TASK_DIR / name).read_bytes(), (
            f"data/lm_eval/{name} is stale: rebuild with {lt.BUILD_COMMAND}")
    assert sum(p.stat().st_size for p in lt.TASK_DIR.iterdir()) < 500_000


def test_committed_files_hold_no_absolute_paths():
    for path in lt.TASK_DIR.iterdir():
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert str(REPO_ROOT) not in text and "/home/" not in text and "/root/" not in text, path


def test_manifest_counts_and_source():
    manifest = json.loads((lt.TASK_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["source_split"] == "test"
    assert manifest["works"] == list(works())
    assert len(lt.load_docs(lt.PPL_TASK)) == manifest["tasks"][lt.PPL_TASK]["documents"] == 72
    assert len(lt.load_docs(lt.NEXTLINE_TASK)) == manifest["tasks"][lt.NEXTLINE_TASK]["items"] == 300


def test_nextline_items_have_four_distinct_choices_and_the_true_next_line():
    items = lt.load_docs(lt.NEXTLINE_TASK)
    assert len({item["id"] for item in items}) == len(items)
    for item in items:
        lines = works()[item["work"]].split("\n")
        start = int(item["id"].rsplit("/", 1)[1])
        context = item["context"].split("\n")
        choices = item["choices"]
        assert len(context) == lt.CONTEXT_LINES and context == lines[start:start + lt.CONTEXT_LINES]
        assert len(choices) == lt.N_CHOICES and 0 <= item["label"] < lt.N_CHOICES
        assert choices[item["label"]] == lines[start + lt.CONTEXT_LINES].strip()  # the true next line
        assert len({" ".join(c.casefold().split()) for c in choices}) == lt.N_CHOICES
        stripped = {line.strip() for line in lines}
        for line in context + choices:
            assert lt.is_spoken_line(line), line  # no speaker names, stage directions, headings
        for choice in choices:
            assert choice in stripped  # distractors come from the same work
        gold = choices[item["label"]]
        for choice in choices:
            assert abs(len(choice) - len(gold)) <= max(3, round(4 * lt.LENGTH_TOLERANCE * len(gold)))
    labels = [item["label"] for item in items]
    assert all(labels.count(k) > len(items) / 8 for k in range(lt.N_CHOICES))  # gold position varies


def test_ppl_passages_are_whole_lines_of_test_works_and_fit_the_context():
    from course_lib.lm.models import load_tokenizer

    tok = load_tokenizer()
    docs = lt.load_docs(lt.PPL_TASK)
    for doc in docs:
        text = doc["text"]
        assert lt.PASSAGE_MIN_CHARS <= len(text) <= lt.PASSAGE_MAX_CHARS
        work = works()[doc["work"]]
        at = work.find(text)
        assert at >= 0 and (at == 0 or work[at - 1] == "\n")
        assert work[at + len(text):at + len(text) + 1] in ("", "\n")  # ends at a line end
        assert len(tok(text)["input_ids"]) < lt.TRAINED_POSITIONS  # one trained window, with the prefix token
    assert {doc["work"] for doc in docs} == set(works())


def test_no_item_uses_train_or_calibration_text():
    other = other_splits_text()
    for doc in lt.load_docs(lt.PPL_TASK):
        assert doc["work"] in works() and doc["text"] not in other
    for item in lt.load_docs(lt.NEXTLINE_TASK):
        assert item["work"] in works()
        start = int(item["id"].rsplit("/", 1)[1])
        window = works()[item["work"]].split("\n")[start:start + lt.CONTEXT_LINES + 1]
        assert window[-1].strip() == item["choices"][item["label"]]
        assert "\n".join(window) not in other
    with pytest.raises(ValueError, match="must not use"):
        lt.source_works("calibration")


def test_yaml_data_files_are_relative_and_read_by_the_loader():
    for task in lt.TASKS:
        yaml_text = (lt.TASK_DIR / f"{task}.yaml").read_text(encoding="utf-8")
        assert f"test: {task}.jsonl" in yaml_text and f"custom_dataset: !function {lt.LOADER_MODULE}.load" in yaml_text


def test_tasks_load_from_another_working_directory(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager, get_task_dict

    monkeypatch.chdir(tmp_path)  # relative data_files would now point into tmp_path
    manager = TaskManager(include_path=str(lt.TASK_DIR), include_defaults=False)
    assert set(lt.TASKS) <= set(manager.all_tasks)
    tasks = get_task_dict(list(lt.TASKS), manager)
    assert {name: len(task.test_docs()) for name, task in tasks.items()} == {
        lt.PPL_TASK: 72, lt.NEXTLINE_TASK: 300}


# --- errors --------------------------------------------------------------------------------


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="course_ppl, course_nextline, course"):
        lt.evaluate(None, None, tasks=("hellaswag",))
    with pytest.raises(ValueError, match="valid names"):
        lt.cli_command(tasks="course_nope")


def test_missing_data_says_how_to_build(tmp_path):
    with pytest.raises(lt.TaskDataMissingError, match="python -m course_lib.lm.eval_tasks build"):
        lt.evaluate(None, None, task_dir=tmp_path)


def test_cli_command_is_relative_and_offline():
    cmd = lt.cli_command()
    assert cmd.startswith("HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1")
    assert "lm_eval --model hf --model_args pretrained=data/course-model,dtype=float32" in cmd
    assert "--include_path data/lm_eval" in cmd and "--device cpu" in cmd and str(REPO_ROOT) not in cmd
    assert "--limit 3" in lt.cli_command(limit=3, tasks="course")


# --- evaluation ----------------------------------------------------------------------------


def test_course_lib_import_sets_offline_env():
    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("HF_DATASETS_OFFLINE") == "1"


def check_ranges(scores: dict) -> None:
    assert set(scores) == {"word_perplexity", "byte_perplexity", "bits_per_byte", "acc", "acc_norm",
                           "acc_mutual_info"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values())
    assert scores["word_perplexity"] > scores["byte_perplexity"] > 1
    assert scores["bits_per_byte"] == pytest.approx(math.log2(scores["byte_perplexity"]), rel=1e-9)
    for metric in ("acc", "acc_norm", "acc_mutual_info"):
        assert 0 <= scores[metric] <= 1


def test_evaluate_bundled_model_small_limit_is_deterministic():
    model, tok = bundled()
    first = api_scores_small()
    check_ranges(first)
    assert 1.5 < first["bits_per_byte"] < 2.5  # the bundled model: about 1.9 on the test plays
    assert lt.evaluate(model, tok, limit=SMALL_LIMIT) == first  # bit-identical on a second run


def test_evaluate_tiny_random_model():
    from course_lib.lm.models import load_tokenizer, tiny_model

    model = tiny_model("llama")
    # windows of 64 tokens: every passage (up to 255 tokens) is scored in several rolling windows
    scores = lt.evaluate(model, load_tokenizer(), limit=4, batch_size=4, max_length=64)
    check_ranges(scores)
    assert scores["bits_per_byte"] > 3  # untrained: about log2(4096) / 2.9 bytes per token


@pytest.mark.slow
def test_full_nextline_task_beats_chance():
    model, tok = bundled()
    scores = lt.evaluate(model, tok, tasks=lt.NEXTLINE_TASK)
    # Measured: acc 0.300, acc_norm 0.310 (about 2 standard errors above chance on 300 items: the
    # a-priori probability of a line dominates), acc_mutual_info 0.560 (the context helps a lot).
    assert scores["acc"] > 0.25 and scores["acc_norm"] > 0.25
    assert scores["acc_mutual_info"] > 0.45


def test_wilson_interval_known_values_and_errors():
    lo, hi = lt.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)  # textbook value
    lo, hi = lt.wilson_interval(0.1875 * 16, 16)  # 3 of 16: the small profile's float-model acc
    assert lo < 0.25 < hi and lo == pytest.approx(0.0659, abs=1e-4) and hi == pytest.approx(0.4301, abs=1e-4)
    assert lt.wilson_interval(0, 10)[0] == 0.0 and lt.wilson_interval(10, 10)[1] == 1.0
    n = 300  # a larger sample narrows the interval around the same proportion
    assert lt.wilson_interval(0.3 * n, n)[1] - lt.wilson_interval(0.3 * n, n)[0] < 0.11
    with pytest.raises(ValueError, match="positive number of items"):
        lt.wilson_interval(1, 0)
    with pytest.raises(ValueError, match="between 0 and n"):
        lt.wilson_interval(17, 16)


def test_items_evaluated_and_gold_positions():
    assert lt.items_evaluated(lt.NEXTLINE_TASK, 16) == 16
    assert lt.items_evaluated(lt.NEXTLINE_TASK) == lt.items_evaluated(lt.NEXTLINE_TASK, 10_000) == 300
    assert lt.items_evaluated(lt.NEXTLINE_TASK, 0.1) == 30
    counts = lt.gold_positions()
    assert sum(counts) == 300 and len(counts) == lt.N_CHOICES
    # chi-square against a uniform position: far below the 5% critical value 7.81 (3 degrees of freedom)
    assert sum((c - 75) ** 2 / 75 for c in counts) < 7.81
    assert sum(lt.gold_positions(limit=16)) == 16


# --- the lm_eval command line --------------------------------------------------------------


def _unshare_problem() -> str | None:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return "unshare is not available on this system"
    try:
        probe = subprocess.run(["unshare", "-n", "--", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -n failed to run ({exc})"
    if probe.returncode != 0:
        return ("unshare -n cannot create a network namespace here (needs root or user namespaces): "
                + probe.stderr.strip()[:200])
    return None


def _lm_eval_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's lm_eval
    env["TQDM_DISABLE"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # see one_torch_thread
    return env  # the offline settings come from the command's own prefix


@pytest.mark.slow
def test_lm_eval_cli_runs_offline(tmp_path):
    """The real command line on the saved directory: in a namespace with no network where
    ``unshare -n`` works (the stronger check), else with only the offline settings of its prefix."""
    if shutil.which("lm_eval", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the lm_eval command is not installed next to this Python")
    out = tmp_path / "results"
    cmd = lt.cli_command(out_dir=out, limit=SMALL_LIMIT, relative_to=None)
    argv = ["bash", "-c", cmd]
    if _unshare_problem() is None:
        argv = ["unshare", "-n", "--"] + argv
    proc = subprocess.run(argv, cwd=tmp_path, env=_lm_eval_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = out.rglob("results_*.json")
    results = json.loads(result_file.read_text())["results"]
    cli = {m: results[task][f"{m},none"] for task, metrics in lt.HEADLINE.items() for m in metrics}
    assert cli == pytest.approx(api_scores_small(), rel=1e-5)  # the CLI on the saved directory = the Python API
