"""``course_qa``: short multiple-choice questions for the real chat model (an offline lm-eval task).

The bundled model knows only Shakespeare-era plays; SmolLM2-135M-Instruct answers simple questions.
This task measures that knowledge, so that a compressed SmolLM2 can show what it lost.

How the items were made (everything written for the course; nothing taken from a benchmark or site):

* **Hand-written facts** (``qa_bank``: geography, science_nature, words_units, everyday). Tables of
  (subject, answer) pairs: countries with capital and continent, planets, element symbols, colours,
  animals' sounds, legs and homes, units, opposites. One question template per table ("What is the
  capital of France?"); the **distractors are three other answers of the same table** (other
  capitals, other colours, other planets), drawn with the seeded generator; units get nearby
  numbers (off by one or two, plus ten, doubled, halved). ``everyday`` questions carry their own
  three hand-written distractors of the same kind.
* **Generated from seeded templates**:
  ``arithmetic``: sums and differences up to 20 or 30 and one-digit products, distractors off by
  1, 2 or 10; ``comparison``: the largest or smallest of four one-digit numbers (the choices are
  those four); ``sequence``: the next term counting up or down by 1, 2, 3, 5 or 10, distractors one
  or two steps too far or off by 1-3 (never a number shown); ``reasoning``: tomorrow/yesterday and
  the month after/before (distractors: days or months not next to the answer, so never the one
  named), three-person orderings (the other two names and one name not mentioned), and "Which of
  these is a fruit?" (one member of each of three other groups).
* **Choices are scored in cloze form**: the context is ``Question: ...\\nAnswer:`` and each choice
  is a continuation after a space (the answer's text, not a letter: a 135M model cannot do
  letter choice). acc takes the choice with the highest log-likelihood, acc_norm divides it by the
  choice's length in characters first. Chance is 25% for both.

Randomness: one seed, ``SEED``; each category has its own ``random.Random(f"{SEED}:{category}")``,
so changing one category leaves the others' items unchanged. Gold positions: within a category the
labels are consecutive shuffled blocks of (0, 1, 2, 3), so every position holds the answer for a
quarter of the items (within one item per category); the other positions get the distractors in
shuffled order. The file's item order is one more seeded shuffle, so any ``limit`` is a mix of
categories.

Checks (``check_items``, run by every build): four choices, distinct ignoring case; label in range;
no question twice; every arithmetic, comparison, sequence, day and month answer recomputed from
the question's text; gold positions balanced. The manifest (``data/lm_eval/manifest.json``, key
``tasks.course_qa``) records the counts per category and per position.

Difficulty was set per generator, never per item, after measuring SmolLM2-135M-Instruct per category:
SmolLM2 was at or below chance on sequences and days/months when a choice repeated a number or name
of the question (it copies them), so those generators never offer one. Comparisons use one-digit
numbers and sequences steps of 1, 2, 3, 5 or 10: with two-digit numbers and steps of 2 to 9 it was
at chance.
Measured on all 449 items (float32, CPU): SmolLM2-135M-Instruct acc 0.664 +- 0.022, acc_norm
0.577 +- 0.023, categories from 0.48 (comparison, sequence) to 0.92 (everyday); the bundled model
0.263 / 0.265, i.e. chance.

    python -m course_lib.eval.qa_task build        # writes data/lm_eval/course_qa.{jsonl,yaml}
    from course_lib.lm.eval_tasks import evaluate
    evaluate(model, tok, tasks=("course_qa",))     # {"qa_acc": ..., "qa_acc_norm": ...}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

from ..lm.eval_tasks import LOADER_MODULE, QA_TASK, TASK_DIR
from . import qa_bank as bank

SEED = "course-qa-v1"
N_CHOICES = 4
BUILD_COMMAND = "python -m course_lib.eval.qa_task build"
PROMPT = "Question: {question}\nAnswer:"  # the YAML's doc_to_text, in Jinja form there

# ------------------------------------------------------------------------------------------------
# Generators: each returns (kind, question, answer, [three distractors]) rows
# ------------------------------------------------------------------------------------------------


def _others(rng: random.Random, answer, pool) -> list:
    """Three other members of ``pool`` (same type as the answer), without repeats."""
    rest = [p for p in dict.fromkeys(pool) if str(p).casefold() != str(answer).casefold()]
    return rng.sample(rest, N_CHOICES - 1)


def _near(rng: random.Random, n: int, offsets, avoid=()) -> list[int]:
    """Three numbers ``n + offset`` from ``offsets``: non-negative, not ``n``, none of ``avoid``."""
    pool = [m for m in dict.fromkeys(n + o for o in offsets) if m >= 0 and m != n and m not in avoid]
    return rng.sample(pool, N_CHOICES - 1)


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def geography(rng: random.Random) -> list[tuple]:
    capitals = [c for _, c, _ in bank.COUNTRIES]
    rows = [("capital", f"What is the capital of {k}?", c, _others(rng, c, capitals))
            for k, c, _ in bank.COUNTRIES]
    rows += [("continent", f"On which continent is {k}?", z, _others(rng, z, bank.CONTINENTS))
             for k, _, z in bank.COUNTRIES if z]
    return rows


def science_nature(rng: random.Random) -> list[tuple]:
    rows = [("planet", q, a, _others(rng, a, bank.PLANETS)) for q, a in bank.PLANET_FACTS]
    symbols, sounds, homes = ([x for _, x in table] for table in (bank.ELEMENTS, bank.SOUNDS, bank.HOMES))
    rows += [("element", f"What is the chemical symbol for {e}?", s, _others(rng, s, symbols))
             for e, s in bank.ELEMENTS]
    rows += [("colour", q, a, _others(rng, a, bank.COLOURS)) for q, a in bank.COLOUR_FACTS]
    rows += [("sound", f"What sound does {_a(k)} make?", s, _others(rng, s, sounds)) for k, s in bank.SOUNDS]
    rows += [("legs", f"How many legs does {_a(k)} have?", n, _others(rng, n, [0, 2, 4, 6, 8]))
             for k, n in bank.LEGS]
    rows += [("home", f"Where does {_a(k)} live?", h, _others(rng, h, homes)) for k, h in bank.HOMES]
    return rows


def words_units(rng: random.Random) -> list[tuple]:
    rows = [("unit", q, n, _near(rng, n, (-2, -1, 1, 2, 10, n, -n // 2))) for q, n in bank.UNITS]
    words = [w for pair in bank.OPPOSITES for w in pair]
    rows += [("opposite", f"What is the opposite of {a}?", b, _others(rng, b, [w for w in words if w != a]))
             for a, b in bank.OPPOSITES]
    return rows


def everyday(rng: random.Random) -> list[tuple]:
    return [("everyday", q, a, d.split("|")) for q, a, d in bank.EVERYDAY]


def arithmetic(rng: random.Random, per_kind: int = 20) -> list[tuple]:
    """Sums and differences of numbers up to 20 or 30, products of one-digit numbers; near distractors."""
    rows, seen = [], set()
    ops = {"add": ("+", lambda a, b: a + b, (1, 20)), "sub": ("-", lambda a, b: a - b, (5, 30)),
           "mul": ("times", lambda a, b: a * b, (2, 9))}
    for kind, (sign, f, (lo, hi)) in ops.items():
        while sum(r[0] == kind for r in rows) < per_kind:
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            a, b = (max(a, b), min(a, b)) if kind == "sub" else (a, b)
            if (kind, a, b) in seen or f(a, b) < 1:
                continue
            seen.add((kind, a, b))
            n = f(a, b)
            rows.append((kind, f"What is {a} {sign} {b}?", n, _near(rng, n, (-10, -2, -1, 1, 2, 10))))
    return rows


def comparison(rng: random.Random, n_items: int = 48) -> list[tuple]:
    """The largest or smallest of four different one-digit numbers; the choices are those four."""
    rows, seen = [], set()
    while len(rows) < n_items:
        kind = ("largest", "smallest")[len(rows) % 2]
        nums = rng.sample(range(1, 10), N_CHOICES)
        if (kind, *nums) in seen:
            continue
        seen.add((kind, *nums))
        listed = ", ".join(map(str, nums[:-1])) + f" or {nums[-1]}"
        answer = max(nums) if kind == "largest" else min(nums)
        rows.append((kind, f"Which number is the {kind}: {listed}?", answer, [m for m in nums if m != answer]))
    return rows


def sequence(rng: random.Random, n_items: int = 48) -> list[tuple]:
    """Counting on (or, one item in four, down) by 1, 2, 3, 5 or 10 from four shown terms; the
    distractors are one or two steps too far or off by 1 to 3, never a number shown."""
    rows, seen = [], set()
    while len(rows) < n_items:
        step = rng.choice((1, 2, 3, 5, 10)) * (-1 if len(rows) % 4 == 3 else 1)
        start = rng.randint(1, 20) if step > 0 else rng.randint(50, 90)
        terms = [start + i * step for i in range(4)]
        if tuple(terms) in seen:
            continue
        seen.add(tuple(terms))
        n = terms[-1] + step
        question = f"What is the next number in the sequence {', '.join(map(str, terms))}, ...?"
        wrong = _near(rng, n, (step, 2 * step, -1, 1, -2, 2, -3, 3), avoid=terms)
        rows.append(("up" if step > 0 else "down", question, n, wrong))
    return rows


def _not_next_to(rng: random.Random, names: list[str], i: int) -> list[str]:
    """Three names of the cycle ``names`` (days, months) that are neither ``names[i]`` nor next to it."""
    n = len(names)
    return rng.sample([names[(i + o) % n] for o in range(2, n - 1)], N_CHOICES - 1)


def reasoning(rng: random.Random) -> list[tuple]:
    """Days and months one step on or back, three-person orderings, and which word names a kind of thing."""
    rows = []
    for d, day in enumerate(bank.DAYS):
        for word, s in (("what day is tomorrow", 1), ("what day was yesterday", -1)):
            rows.append(("day", f"If today is {day}, {word}?", bank.DAYS[(d + s) % 7],
                         _not_next_to(rng, bank.DAYS, d + s)))
    for m, month in enumerate(bank.MONTHS):
        for word, s in (("after", 1), ("before", -1)):
            rows.append(("month", f"Which month comes right {word} {month}?", bank.MONTHS[(m + s) % 12],
                         _not_next_to(rng, bank.MONTHS, m + s)))
    for i in range(16):  # 4 relations x (most, least), each twice
        a, b, c, other = rng.sample(bank.NAMES, 4)
        more, most, least = bank.ORDERS[i % len(bank.ORDERS)]
        ask_most = (i // 4) % 2 == 0
        question = f"{a} is {more} than {b}, and {b} is {more} than {c}. Who is the {most if ask_most else least}?"
        rows.append(("order", question, a if ask_most else c, [b, c if ask_most else a, other]))
    groups = list(bank.GROUPS)
    for template in ("Which of these is {}?", "Which word names {}?"):
        for g in groups:
            wrong = [rng.choice(bank.GROUPS[o]) for o in rng.sample([x for x in groups if x != g], N_CHOICES - 1)]
            rows.append(("kind_of", template.format(_a(g)), rng.choice(bank.GROUPS[g]), wrong))
    return rows


CATEGORIES = {"geography": geography, "science_nature": science_nature, "words_units": words_units,
              "everyday": everyday, "arithmetic": arithmetic, "comparison": comparison,
              "sequence": sequence, "reasoning": reasoning}

# ------------------------------------------------------------------------------------------------
# Items, checks, files
# ------------------------------------------------------------------------------------------------


def _balanced_labels(rng: random.Random, n: int) -> list[int]:
    """``n`` gold positions: consecutive shuffled blocks of (0..N_CHOICES-1)."""
    labels: list[int] = []
    while len(labels) < n:
        block = list(range(N_CHOICES))
        rng.shuffle(block)
        labels += block
    return labels[:n]


def build_items(seed: str = SEED) -> list[dict]:
    """All items ``{"id", "category", "kind", "question", "choices", "label"}``, in the file's order."""
    items = []
    for category, make in CATEGORIES.items():
        rng = random.Random(f"{seed}:{category}")
        rows = make(rng)
        labels = _balanced_labels(rng, len(rows))
        for i, ((kind, question, answer, wrong), label) in enumerate(zip(rows, labels)):
            wrong = [str(w) for w in wrong]
            rng.shuffle(wrong)
            choices = wrong[:label] + [str(answer)] + wrong[label:]
            items.append({"id": f"{category}/{i:03d}", "category": category, "kind": kind,
                          "question": question, "choices": choices, "label": label})
    random.Random(f"{seed}:order").shuffle(items)
    return items


def recompute(item: dict) -> str | None:
    """The answer of a generated item worked out again from its question's text (None: not generated)."""
    q, kind = item["question"], item["kind"]
    nums = [int(x) for x in re.findall(r"\d+", q)]
    if kind in ("add", "sub", "mul"):
        a, b = nums
        return str({"add": a + b, "sub": a - b, "mul": a * b}[kind])
    if kind in ("largest", "smallest"):
        return str(max(nums) if kind == "largest" else min(nums))
    if kind in ("up", "down"):
        return str(nums[-1] + nums[-1] - nums[-2])
    if kind == "day":
        day, when = re.fullmatch(r"If today is (\w+), what day (?:is|was) (\w+)\?", q).groups()
        return bank.DAYS[(bank.DAYS.index(day) + (1 if when == "tomorrow" else -1)) % 7]
    if kind == "month":
        when, month = re.fullmatch(r"Which month comes right (after|before) (\w+)\?", q).groups()
        return bank.MONTHS[(bank.MONTHS.index(month) + (1 if when == "after" else -1)) % 12]
    return None


def check_items(items: list[dict]) -> None:
    """Raise ValueError on a malformed item, a repeated question, a wrong answer or unbalanced positions."""
    questions = Counter(it["question"] for it in items)
    if repeated := [q for q, k in questions.items() if k > 1]:
        raise ValueError(f"questions asked twice: {repeated[:3]}")
    for it in items:
        choices, label = it["choices"], it["label"]
        if len(choices) != N_CHOICES or len({c.casefold() for c in choices}) != N_CHOICES:
            raise ValueError(f"{it['id']}: needs {N_CHOICES} distinct choices, has {choices}")
        if not 0 <= label < N_CHOICES:
            raise ValueError(f"{it['id']}: label {label} out of range")
        expected = recompute(it)
        if expected is not None and choices[label] != expected:
            raise ValueError(f"{it['id']}: answer {choices[label]!r}, recomputed {expected!r}")
    counts = Counter(it["label"] for it in items)
    positions = [counts[i] for i in range(N_CHOICES)]
    if max(positions) - min(positions) > len(CATEGORIES):
        raise ValueError(f"gold positions are unbalanced: {positions}")


_YAML = """\
task: {task}
# Data: the JSONL file below, read by {loader}.py in this directory (relative paths are resolved
# there, not in the working directory). Written by: {build}
# No tag: the tag "course" runs course_ppl and course_nextline only.
dataset_path: json
dataset_kwargs:
  data_files:
    test: {task}.jsonl
custom_dataset: !function {loader}.load
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
  description: "{n} short questions written for the course, {k} choices scored as answers (chance {chance:.0%})"
"""


def task_files(items: list[dict]) -> dict[str, str]:
    """File name -> text of the task's JSONL and YAML."""
    rows = "".join(json.dumps(it, ensure_ascii=False, sort_keys=True) + "\n" for it in items)
    yaml = _YAML.format(task=QA_TASK, loader=LOADER_MODULE, build=BUILD_COMMAND, n=len(items),
                        k=N_CHOICES, chance=1 / N_CHOICES)
    return {f"{QA_TASK}.jsonl": rows, f"{QA_TASK}.yaml": yaml}


def manifest_entry(items: list[dict]) -> dict:
    """What the manifest records about the task: counts per category and per gold position."""
    per_category = Counter(it["category"] for it in items)
    positions = Counter(it["label"] for it in items)
    return {"items": len(items), "built_by": BUILD_COMMAND, "seed": SEED, "choices": N_CHOICES,
            "chance": 1 / N_CHOICES, "prompt": PROMPT, "target_delimiter": " ",
            "categories": {c: per_category[c] for c in CATEGORIES},
            "gold_positions": [positions[i] for i in range(N_CHOICES)]}


def build(out_dir: Path | str = TASK_DIR, *, verbose: bool = False) -> dict:
    """Write course_qa.{jsonl,yaml} into ``out_dir`` and its entry into the manifest there; return the entry.

    The other tasks' files and manifest entries are left as they are. A directory without the
    loader gets a copy of the committed one, so the task runs from there too."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = build_items()
    check_items(items)
    files = task_files(items)
    for name, text in files.items():
        (out / name).write_bytes(text.encode("utf-8"))  # bytes: no newline translation
    loader = out / f"{LOADER_MODULE}.py"
    if not loader.is_file():
        shutil.copyfile(TASK_DIR / loader.name, loader)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    entry = manifest_entry(items)
    manifest.setdefault("tasks", {})[QA_TASK] = entry
    hashes = {**manifest.get("files", {}),
              **{name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in files.items()}}
    manifest["files"] = dict(sorted(hashes.items()))
    path.write_bytes((json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    if verbose:
        for name, text in files.items():
            print(f"{out / name}  {len(text.encode('utf-8')):>8} bytes")
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.eval.qa_task", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write course_qa.jsonl, course_qa.yaml and its manifest entry")
    b.add_argument("--out", type=Path, default=TASK_DIR, help="task directory (default: data/lm_eval)")
    args = parser.parse_args(argv)
    entry = build(args.out, verbose=True)
    counts = ", ".join(f"{c} {n}" for c, n in entry["categories"].items())
    print(f"built {QA_TASK}: {entry['items']} items, {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
