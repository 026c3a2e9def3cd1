"""course_qa, the multiple-choice questions for the real chat model (course_lib.eval.qa_task).

The data tests read the committed files and rebuild them; the answers are recomputed here from the
question text with code of this file (and the calendar module), not with the builder's own checks.
The evaluation tests run lm-eval on a tiny random model; the slow one scores SmolLM2 in full.
"""

from __future__ import annotations

import calendar
import json
import math
import re
import shutil
from collections import Counter
from functools import cache

import pytest

from course_lib.eval import qa_bank, qa_task as qa
from course_lib.lm import eval_tasks as lt

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

QA_KEYS = {"qa_acc", "qa_acc_norm"}
OLD_KEYS = {"word_perplexity", "byte_perplexity", "bits_per_byte", "acc", "acc_norm", "acc_mutual_info"}


@cache
def committed() -> list[dict]:
    return lt.load_docs(lt.QA_TASK)


def manifest() -> dict:
    return json.loads((lt.TASK_DIR / "manifest.json").read_text(encoding="utf-8"))


@cache
def tiny():
    from course_lib.lm.models import load_tokenizer, tiny_model

    return tiny_model("llama"), load_tokenizer()


# --- building ---------------------------------------------------------------------------------


def test_build_is_deterministic_and_equals_the_committed_files(tmp_path):
    shutil.copyfile(lt.TASK_DIR / "manifest.json", tmp_path / "manifest.json")
    first = qa.build(tmp_path)
    names = [f"{lt.QA_TASK}.jsonl", f"{lt.QA_TASK}.yaml", "manifest.json"]
    once = {name: (tmp_path / name).read_bytes() for name in names}
    assert qa.build(tmp_path) == first
    for name in names:
        assert (tmp_path / name).read_bytes() == once[name] == (lt.TASK_DIR / name).read_bytes(), (
            f"data/lm_eval/{name} is stale: rebuild with {qa.BUILD_COMMAND}")
    assert first == manifest()["tasks"][lt.QA_TASK]


def test_build_into_an_empty_directory_runs_there(tmp_path):
    qa.build(tmp_path)
    assert (tmp_path / f"{lt.LOADER_MODULE}.py").is_file()
    written = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert list(written["tasks"]) == [lt.QA_TASK] and sorted(written["files"]) == [
        f"{lt.QA_TASK}.jsonl", f"{lt.QA_TASK}.yaml"]
    assert len(lt.load_docs(lt.QA_TASK, tmp_path)) == len(committed())


def test_the_other_builder_keeps_course_qa(tmp_path):
    """python -m course_lib.lm.eval_tasks build rewrites the manifest: course_qa must survive it."""
    lt.build(tmp_path)  # an empty directory: course_qa is carried over from the committed one
    for name in (f"{lt.QA_TASK}.jsonl", f"{lt.QA_TASK}.yaml", "manifest.json"):
        assert (tmp_path / name).read_bytes() == (lt.TASK_DIR / name).read_bytes(), name
    (tmp_path / f"{lt.QA_TASK}.yaml").write_text("changed\n")  # an existing directory's own copy is kept
    lt.build(tmp_path)
    assert (tmp_path / f"{lt.QA_TASK}.yaml").read_text() == "changed\n"
    assert list(json.loads((tmp_path / "manifest.json").read_text())["tasks"]) == [
        lt.PPL_TASK, lt.NEXTLINE_TASK, lt.QA_TASK]


# --- the items --------------------------------------------------------------------------------


def test_items_are_well_formed_and_counted_in_the_manifest():
    items = committed()
    assert 300 <= len(items) <= 500
    assert len({it["id"] for it in items}) == len(items)
    questions = [it["question"].casefold() for it in items]
    assert len(set(questions)) == len(questions), "a question is asked twice"
    for it in items:
        assert set(it) == {"id", "category", "kind", "question", "choices", "label"}
        assert len(it["choices"]) == 4 and len({c.casefold().strip() for c in it["choices"]}) == 4, it
        assert all(isinstance(c, str) and c == c.strip() and c for c in it["choices"]), it
        assert isinstance(it["label"], int) and 0 <= it["label"] < 4, it
        assert it["question"].endswith(("?", ".")) and it["id"].startswith(it["category"] + "/")
    entry = manifest()["tasks"][lt.QA_TASK]
    per_category = Counter(it["category"] for it in items)
    assert entry["categories"] == dict(per_category) and entry["items"] == len(items)
    assert set(per_category) == set(qa.CATEGORIES) and min(per_category.values()) >= 30


def test_gold_positions_are_balanced():
    items = committed()
    counts = Counter(it["label"] for it in items)
    assert manifest()["tasks"][lt.QA_TASK]["gold_positions"] == [counts[i] for i in range(4)]
    for position in range(4):
        assert abs(counts[position] / len(items) - 0.25) < 0.02, counts
    for category in qa.CATEGORIES:  # also within each category: blocks of the four positions
        c = Counter(it["label"] for it in items if it["category"] == category)
        assert max(c.values()) - min(c.values()) <= 1, (category, c)


def test_categories_are_mixed_in_the_file_order():
    """lm-eval's limit takes the first items: they should not all come from one category."""
    assert len({it["category"] for it in committed()[:16]}) >= 5


def _answer(question: str, kind: str) -> str | None:
    """The answer of a generated question, worked out independently of the builder."""
    days, months = list(calendar.day_name), list(calendar.month_name)[1:]
    nums = [int(x) for x in re.findall(r"\d+", question)]
    if m := re.fullmatch(r"What is (\d+) (\+|-|times) (\d+)\?", question):
        a, op, b = int(m[1]), m[2], int(m[3])
        return str(a + b if op == "+" else a - b if op == "-" else a * b)
    if question.startswith("Which number is the "):
        return str(max(nums) if "largest" in question else min(nums))
    if question.startswith("What is the next number in the sequence"):
        steps = {b - a for a, b in zip(nums, nums[1:])}
        assert len(steps) == 1, question  # an arithmetic sequence
        return str(nums[-1] + steps.pop())
    if m := re.fullmatch(r"If today is (\w+), what day (?:is tomorrow|was yesterday)\?", question):
        return days[(days.index(m[1]) + (1 if "tomorrow" in question else -1)) % 7]
    if m := re.fullmatch(r"Which month comes right (after|before) (\w+)\?", question):
        return months[(months.index(m[2]) + (1 if m[1] == "after" else -1)) % 12]
    if m := re.fullmatch(r"(\w+) is (\w+) than (\w+), and (\w+) is \2 than (\w+)\. Who is the (\w+)\?", question):
        assert m[3] == m[4], question
        return m[1] if m[6] in {"oldest", "tallest", "fastest", "heaviest"} else m[5]
    return None


def test_generated_answers_are_right():
    checked = Counter()
    for it in committed():
        expected = _answer(it["question"], it["kind"])
        if expected is not None:
            assert it["choices"][it["label"]] == expected, it
            checked[it["category"]] += 1
    assert checked["arithmetic"] == 60 and checked["comparison"] == 48 and checked["sequence"] == 48
    assert checked["reasoning"] >= 50  # days, months and orderings


def test_numeric_distractors_are_near_and_never_repeat_a_shown_term():
    for it in committed():
        if it["category"] in ("arithmetic", "sequence", "comparison"):
            values = [int(c) for c in it["choices"]]
            answer = values[it["label"]]
            assert all(abs(v - answer) <= 20 and v >= 0 for v in values), it
        if it["category"] == "sequence":
            shown = {x for x in re.findall(r"\d+", it["question"])}
            assert shown.isdisjoint(it["choices"]), it
        if it["category"] == "comparison":
            assert sorted(it["choices"]) == sorted(re.findall(r"\d+", it["question"])), it


def test_distractors_are_of_the_answers_type():
    capitals = {c for _, c, _ in qa_bank.COUNTRIES}
    names = {"capital": capitals, "continent": set(qa_bank.CONTINENTS), "planet": set(qa_bank.PLANETS),
             "colour": set(qa_bank.COLOURS), "day": set(calendar.day_name),
             "month": set(calendar.month_name[1:]), "element": {s for _, s in qa_bank.ELEMENTS}}
    for it in committed():
        if it["kind"] in names:
            assert set(it["choices"]) <= names[it["kind"]], it
        if it["kind"] in ("day", "month"):  # the one named in the question is never offered
            named = re.findall(r"[A-Z][a-z]+day|[A-Z][a-z]+(?=\?)", it["question"])
            assert named and named[0] not in it["choices"], it


def test_check_items_rejects_broken_items():
    items = [dict(it, choices=list(it["choices"])) for it in qa.build_items()]
    qa.check_items(items)
    arithmetic = next(i for i, it in enumerate(items) if it["category"] == "arithmetic")
    broken = [dict(it, choices=list(it["choices"])) for it in items]
    broken[arithmetic]["label"] = (broken[arithmetic]["label"] + 1) % 4  # a wrong answer
    with pytest.raises(ValueError, match="recomputed"):
        qa.check_items(broken)
    twice = items + [dict(items[0], id="extra")]
    with pytest.raises(ValueError, match="twice"):
        qa.check_items(twice)
    same = [dict(it, choices=list(it["choices"])) for it in items]
    same[0]["choices"][1] = same[0]["choices"][0].upper()
    with pytest.raises(ValueError, match="distinct"):
        qa.check_items(same)
    skewed = [dict(it, label=0, choices=[it["choices"][it["label"]]] + [c for j, c in enumerate(it["choices"])
                                                                      if j != it["label"]]) for it in items]
    with pytest.raises(ValueError, match="unbalanced"):
        qa.check_items(skewed)


# --- lm-eval ----------------------------------------------------------------------------------


def test_yaml_loads_offline_and_formats_the_prompt(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)
    manager = TaskManager(include_path=str(lt.TASK_DIR), include_defaults=False)
    assert lt.QA_TASK in manager.all_tasks
    task = manager.load([lt.QA_TASK])["tasks"][lt.QA_TASK]
    docs = list(task.test_docs())
    assert len(docs) == len(committed())
    first = committed()[0]
    assert task.doc_to_text(docs[0]) == f"Question: {first['question']}\nAnswer:"
    assert task.doc_to_choice(docs[0]) == first["choices"] and task.doc_to_target(docs[0]) == first["label"]
    assert task.config.target_delimiter == " " and task.OUTPUT_TYPE == "multiple_choice"
    assert set(manager.load(["course"])["tasks"]) == set(lt.TASKS)  # the old tag is unchanged


def test_task_names_and_cli():
    assert lt.TASKS == ("course_ppl", "course_nextline")
    assert lt._check_tasks("course") == list(lt.TASKS)
    assert lt._check_tasks(["course", lt.QA_TASK]) == [*lt.TASKS, lt.QA_TASK]
    assert "--tasks course_qa " in lt.cli_command(tasks=(lt.QA_TASK,))
    assert "--tasks course_ppl,course_nextline " in lt.cli_command()


def test_missing_qa_data_names_its_builder(tmp_path):
    with pytest.raises(lt.TaskDataMissingError, match="python -m course_lib.eval.qa_task build"):
        lt.evaluate(None, None, tasks=lt.QA_TASK, task_dir=tmp_path)


def test_evaluate_tiny_model_on_qa_with_stderr():
    model, tok = tiny()
    scores = lt.evaluate(model, tok, tasks=(lt.QA_TASK,), limit=8, batch_size=8)
    assert set(scores) == QA_KEYS and all(0 <= v <= 1 for v in scores.values())
    with_se = lt.evaluate(model, tok, tasks=(lt.QA_TASK,), limit=8, batch_size=8, stderr=True)
    assert set(with_se) == QA_KEYS | {f"{k}_stderr" for k in QA_KEYS}
    assert {k: with_se[k] for k in QA_KEYS} == scores
    for key in QA_KEYS:  # lm-eval's stderr of a mean of 0/1 scores: sqrt(p (1 - p) / (n - 1))
        p = scores[key]
        assert with_se[f"{key}_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / 7), rel=1e-6)


def test_old_tasks_keep_their_keys_and_run_beside_qa():
    model, tok = tiny()
    old = lt.evaluate(model, tok, limit=2, batch_size=4, max_length=64)
    assert set(old) == OLD_KEYS
    nextline = lt.evaluate(model, tok, tasks=lt.NEXTLINE_TASK, limit=4, batch_size=4)
    both = lt.evaluate(model, tok, tasks=(lt.NEXTLINE_TASK, lt.QA_TASK), limit=4, batch_size=4, stderr=True)
    assert {k: both[k] for k in nextline} == nextline  # course_nextline's acc is not overwritten by course_qa's
    assert set(both) == {*nextline, *QA_KEYS} | {f"{k}_stderr" for k in (*nextline, *QA_KEYS)}
    ppl = lt.evaluate(model, tok, tasks=lt.PPL_TASK, limit=2, batch_size=4, max_length=64, stderr=True)
    assert set(ppl) == {"word_perplexity", "byte_perplexity", "bits_per_byte"} | {
        f"{k}_stderr" for k in ("word_perplexity", "byte_perplexity", "bits_per_byte")}
    assert all(math.isnan(ppl[f"{k}_stderr"]) for k in ("word_perplexity", "byte_perplexity", "bits_per_byte"))


@pytest.mark.slow
def test_smollm2_is_well_above_chance_and_below_the_ceiling():
    from course_lib.lm.errors import ModelUnavailableError
    from course_lib.lm.models import load_model

    try:
        model, tok = load_model("smollm2-135m", device="cpu")
    except ModelUnavailableError as exc:
        pytest.skip(f"the real model is not installed: {str(exc).splitlines()[0]}")
    scores = lt.evaluate(model, tok, tasks=(lt.QA_TASK,), stderr=True)
    # Measured (float32, CPU): acc 0.664 +- 0.022, acc_norm 0.577 +- 0.023; the bundled model 0.263
    assert 0.55 < scores["qa_acc"] < 0.8 and 0.45 < scores["qa_acc_norm"] < 0.7
    assert 0.015 < scores["qa_acc_stderr"] < 0.03
