"""Two local lm-evaluation-harness tasks on the held-out test works, runnable fully offline.

* ``course_ppl`` (``loglikelihood_rolling``): passages of the test split's plays; word perplexity,
  byte perplexity and bits per byte.
* ``course_nextline`` (``multiple_choice``): four consecutive lines of a speech, then pick the true
  next line among four; the three distractors are lines of similar length from the same play.
  Metrics acc, acc_norm and acc_mutual_info; chance is 25% for each.

  acc picks the choice with the highest log-likelihood after the context, acc_norm divides that by
  the choice's length in bytes, acc_mutual_info subtracts the choice's log-likelihood *without*
  the context. The first two mostly measure which line is a priori the most probable (common
  words, familiar rhythm); the third measures what the context adds, i.e. whether the model
  follows the speech. For the small bundled model acc is near chance and acc_mutual_info is not.

Both use the **test** split: it is what the course reports perplexity on (``course_lib.lm.perplexity``),
nothing is tuned on it, and the validation split stays free for choosing settings. The train and
calibration splits are never read. Both tasks carry the tag ``course``.

A third task, ``course_qa`` (short questions for the real chat model), is built by
``course_lib.eval.qa_task`` into the same directory; ``evaluate`` and ``cli_command`` accept it by
name (not in the default ``TASKS`` nor the tag), and report its metrics as ``qa_acc`` and ``qa_acc_norm``.

Building (run once, result committed under ``data/lm_eval/``; byte-identical when run twice)::

    python -m course_lib.lm.eval_tasks build [--out data/lm_eval]

Using::

    from course_lib.lm.eval_tasks import evaluate, cli_command
    scores = evaluate(model, tokenizer)        # {"word_perplexity": ..., "acc": ..., ...}
    print(cli_command())                       # the same run with the lm_eval command line

How the data is found. lm-eval passes ``dataset_kwargs`` straight to ``datasets.load_dataset``,
which resolves relative ``data_files`` against the *current working directory*, so a committed
relative path would only work from one directory and an absolute one only on one machine. The task
YAMLs therefore name a ``custom_dataset`` loader (``course_lm_eval_data.py``, written next to them):
lm-eval imports it from the YAML's directory and it reads the JSONL files named in
``dataset_kwargs.data_files`` relative to its own location. The task directory works from any
working directory, with the Python API and the CLI alike, and needs no network and no cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import re
import shlex
import sys
from pathlib import Path

from ..core.env import REPO_ROOT

TASK_DIR = REPO_ROOT / "data" / "lm_eval"  # the --include_path
PPL_TASK = "course_ppl"
NEXTLINE_TASK = "course_nextline"
TASKS = (PPL_TASK, NEXTLINE_TASK)
QA_TASK = "course_qa"  # built by course_lib.eval.qa_task; run only when named
GROUP = "course"  # a tag: both tasks
SOURCE_SPLIT = "test"
SEED = "course-lm-eval-v1"

# course_ppl: passages of at most PASSAGE_MAX_CHARS characters (whole lines, whole speeches where
# possible), so that each fits in the 256 positions the bundled model was trained on (about 2.9
# characters a token; its config allows 512 positions, but positions 256..511 were never trained
# and lm-eval would use them for a longer passage); PASSAGES_PER_WORK of them per play, evenly
# spaced from ACT I to the end.
PASSAGE_MAX_CHARS = 600
PASSAGE_MIN_CHARS = 300
PASSAGES_PER_WORK = 24
TRAINED_POSITIONS = 256

# course_nextline: CONTEXT_LINES lines of one speech, then the next line of the same speech.
CONTEXT_LINES = 4
ITEMS_PER_WORK = 100
N_CHOICES = 4
LINE_MIN_CHARS = 20  # shorter lines ("My lord.") are too easy to confuse and too short to score
LINE_MAX_CHARS = 80
LENGTH_TOLERANCE = 0.15  # a distractor's length is within 15% (at least 3 characters) of the answer's

# Metrics returned by evaluate(), by task: (lm-eval metric name, filter).
HEADLINE = {
    PPL_TASK: ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    NEXTLINE_TASK: ("acc", "acc_norm", "acc_mutual_info"),
}
CHANCE = {metric: 1 / N_CHOICES for metric in HEADLINE[NEXTLINE_TASK]}
QA_HEADLINE = ("acc", "acc_norm")  # course_qa's, returned as qa_acc, qa_acc_norm (no clash with course_nextline)
METRICS = {**HEADLINE, QA_TASK: QA_HEADLINE}
KEY_PREFIX = {QA_TASK: "qa_"}

LOADER_MODULE = "course_lm_eval_data"
BUILD_COMMAND = "python -m course_lib.lm.eval_tasks build"
BUILD_COMMANDS = {QA_TASK: "python -m course_lib.eval.qa_task build"}


class TaskDataMissingError(FileNotFoundError):
    """The task directory lacks a file that the build command writes."""


# --------------------------------------------------------------------------------------------
# Reading the plays
# --------------------------------------------------------------------------------------------

_ACT_ONE = re.compile(r"^\s*act\s+(i|1)\b", re.IGNORECASE)
_HEADING = re.compile(r"^\s*(act|scene)\b", re.IGNORECASE)


def source_works(split: str = SOURCE_SPLIT) -> list[tuple[str, str, str]]:
    """``(doc_id, title, text)`` of the works the tasks are built from."""
    from .corpus import load_split, parse_documents

    if split in ("train", "calibration"):
        raise ValueError(f"the evaluation tasks must not use the {split!r} split")
    return parse_documents(load_split(split))


def is_spoken_line(line: str) -> bool:
    """A line of dialogue worth a question: not a speaker name, stage direction or heading.

    Speaker names are upper case ("KING.", "FIRST GENTLEMAN."), stage directions are bracketed
    ("[Exit.]"), headings start with ACT or SCENE; very short and very long lines are left out.
    """
    text = line.strip()
    if not LINE_MIN_CHARS <= len(text) <= LINE_MAX_CHARS:
        return False
    if "[" in text or "]" in text or _HEADING.match(text):
        return False
    letters = [c for c in text if c.isalpha()]
    upper = sum(c.isupper() for c in letters)
    return bool(letters) and upper < 0.5 * len(letters)  # speaker names and titles are all caps


def _body_start(lines: list[str]) -> int:
    """Index of the "ACT I" line: the title page and list of characters come before it."""
    return next((i for i, line in enumerate(lines) if _ACT_ONE.match(line)), 0)


def _norm(line: str) -> str:
    return " ".join(line.casefold().split())


# --------------------------------------------------------------------------------------------
# course_ppl
# --------------------------------------------------------------------------------------------


def passages(text: str, max_chars: int = PASSAGE_MAX_CHARS) -> list[str]:
    """Cut a work into passages of whole lines, at most ``max_chars`` long where possible.

    Speeches (runs of lines between blank lines) are packed whole while they fit; a speech longer
    than ``max_chars`` is cut at line boundaries. Passages have no blank lines at either end.
    """
    blocks = [b.split("\n") for b in re.split(r"\n\s*\n", text) if b.strip()]
    out: list[str] = []
    current: list[str] = []  # lines, "" between speeches

    def size(lines: list[str]) -> int:
        return sum(len(x) + 1 for x in lines) - 1 if lines else 0

    def flush() -> None:
        if current:
            out.append("\n".join(current).strip())
            current.clear()

    for block in blocks:
        candidate = current + ([""] if current else []) + block
        if size(candidate) <= max_chars:
            current[:] = candidate
            continue
        flush()
        if size(block) <= max_chars:
            current[:] = block
            continue
        for line in block:  # a long speech: cut it between lines
            if current and size(current + [line]) > max_chars:
                flush()
            current.append(line)
    flush()
    return out


def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, first and last included."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n // 2]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def build_ppl_docs(works=None) -> list[dict]:
    """The ``course_ppl`` documents: ``{"id", "work", "title", "text"}``."""
    docs = []
    for doc_id, title, text in works or source_works():
        lines = text.split("\n")
        body = "\n".join(lines[_body_start(lines):])  # from ACT I: no title page, no cast list
        chunks = [p for p in passages(body) if len(p) >= PASSAGE_MIN_CHARS]
        for rank, index in enumerate(evenly_spaced(len(chunks), PASSAGES_PER_WORK)):
            docs.append({"id": f"{doc_id}/{rank:02d}", "work": doc_id, "title": title,
                         "text": chunks[index]})
    return docs


# --------------------------------------------------------------------------------------------
# course_nextline
# --------------------------------------------------------------------------------------------


def _pick_distractors(rng: random.Random, answer: str, pool: list[str], avoid: set[str]) -> list[str]:
    """N_CHOICES - 1 lines of ``pool`` close to ``answer`` in length, distinct after normalising.

    They also match the answer's initial case: verse lines start upper case, wrapped prose lower
    case, and a distractor of the other kind would give itself away by that alone.
    """
    n = len(answer)
    for tolerance in (LENGTH_TOLERANCE, 2 * LENGTH_TOLERANCE, 4 * LENGTH_TOLERANCE):
        width = max(3, round(tolerance * n))
        near = [line for line in pool
                if abs(len(line) - n) <= width and line[0].isupper() == answer[0].isupper()]
        rng.shuffle(near)
        chosen: list[str] = []
        seen = set(avoid)
        for line in near:
            key = _norm(line)
            if key not in seen:
                chosen.append(line)
                seen.add(key)
                if len(chosen) == N_CHOICES - 1:
                    return chosen
    raise RuntimeError(f"no {N_CHOICES - 1} distractors of length near {n} for {answer!r}")


def build_nextline_docs(works=None) -> list[dict]:
    """The ``course_nextline`` items: ``{"id", "work", "context", "choices", "label"}``.

    Windows are CONTEXT_LINES + 1 consecutive spoken lines of one speech (no blank line, speaker
    name or stage direction inside). ITEMS_PER_WORK non-overlapping windows are drawn per work with
    a seeded generator; the gold choice's position is drawn from the same generator.
    """
    items = []
    for doc_id, _title, text in works or source_works():
        lines = text.split("\n")
        start = _body_start(lines)
        spoken = [i >= start and is_spoken_line(line) for i, line in enumerate(lines)]
        pool = sorted({lines[i].strip() for i in range(len(lines)) if spoken[i]})
        span = CONTEXT_LINES + 1
        windows = [i for i in range(start, len(lines) - span + 1) if all(spoken[i:i + span])]
        rng = random.Random(f"{SEED}:nextline:{doc_id}")
        rng.shuffle(windows)
        used: set[int] = set()
        chosen: list[int] = []
        for i in windows:
            if used.isdisjoint(range(i, i + span)):
                chosen.append(i)
                used.update(range(i, i + span))
                if len(chosen) == ITEMS_PER_WORK:
                    break
        if len(chosen) < ITEMS_PER_WORK:
            raise RuntimeError(f"{doc_id}: only {len(chosen)} windows for {ITEMS_PER_WORK} items")
        for i in sorted(chosen):
            context = lines[i:i + CONTEXT_LINES]
            answer = lines[i + CONTEXT_LINES].strip()
            avoid = {_norm(answer)} | {_norm(x) for x in context}
            choices = [answer] + _pick_distractors(rng, answer, pool, avoid)
            label = rng.randrange(N_CHOICES)
            choices[0], choices[label] = choices[label], choices[0]
            items.append({"id": f"{doc_id}/{i}", "work": doc_id, "context": "\n".join(context),
                          "choices": choices, "label": label})
    return items


# --------------------------------------------------------------------------------------------
# Writing the task directory
# --------------------------------------------------------------------------------------------

_COMMON_YAML = """\
tag: {group}
# Data: the JSONL file below, read by {loader}.py in this directory (relative paths are resolved
# there, not in the working directory). Written by: {build}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {task}.jsonl
custom_dataset: !function {loader}.load
test_split: test
"""

_PPL_YAML = """\
task: {task}
{common}output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
  description: "{n} passages of the held-out test plays, whole lines, at most {chars} characters"
"""

_NEXTLINE_YAML = """\
task: {task}
{common}output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: "\\n"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
  - metric: acc_mutual_info
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
  description: "{n} items: {ctx} lines of a held-out play, pick the true next line of {k} (chance {chance:.0%})"
"""


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def _write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))  # bytes: no platform newline translation


def build(out_dir: Path | str = TASK_DIR, *, verbose: bool = False) -> dict:
    """Write both tasks (JSONL data, YAMLs, loader, manifest) into ``out_dir``; return the manifest."""
    from .corpus import load_split

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    works = source_works()
    ppl, nextline = build_ppl_docs(works), build_nextline_docs(works)
    common = {"group": GROUP, "loader": LOADER_MODULE, "build": BUILD_COMMAND}
    files = {
        f"{PPL_TASK}.jsonl": _jsonl(ppl),
        f"{NEXTLINE_TASK}.jsonl": _jsonl(nextline),
        f"{PPL_TASK}.yaml": _PPL_YAML.format(
            task=PPL_TASK, common=_COMMON_YAML.format(task=PPL_TASK, **common), n=len(ppl),
            chars=PASSAGE_MAX_CHARS),
        f"{NEXTLINE_TASK}.yaml": _NEXTLINE_YAML.format(
            task=NEXTLINE_TASK, common=_COMMON_YAML.format(task=NEXTLINE_TASK, **common),
            n=len(nextline), ctx=CONTEXT_LINES, k=N_CHOICES, chance=1 / N_CHOICES),
        # the loader is hand-written source kept in the task directory; a build elsewhere copies it
        f"{LOADER_MODULE}.py": (TASK_DIR / f"{LOADER_MODULE}.py").read_text(encoding="utf-8"),
    }
    kept, kept_files = _other_tasks(out)
    files.update(kept_files)
    split_sha = hashlib.sha256(load_split(SOURCE_SPLIT).encode("utf-8")).hexdigest()
    manifest = {
        "built_by": BUILD_COMMAND,
        "source_split": SOURCE_SPLIT,
        "source_split_sha256": split_sha,
        "works": [doc_id for doc_id, _, _ in works],
        "seed": SEED,
        "tasks": {
            PPL_TASK: {"documents": len(ppl), "passages_per_work": PASSAGES_PER_WORK,
                       "passage_chars": [PASSAGE_MIN_CHARS, PASSAGE_MAX_CHARS]},
            NEXTLINE_TASK: {"items": len(nextline), "items_per_work": ITEMS_PER_WORK,
                            "context_lines": CONTEXT_LINES, "choices": N_CHOICES,
                            "line_chars": [LINE_MIN_CHARS, LINE_MAX_CHARS],
                            "length_tolerance": LENGTH_TOLERANCE, "chance": 1 / N_CHOICES},
            **kept,
        },
        "files": {name: hashlib.sha256(text.encode("utf-8")).hexdigest()
                  for name, text in sorted(files.items())},
    }
    files["manifest.json"] = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    for name, text in files.items():
        _write(out / name, text)
    if verbose:
        for name in sorted(files):
            print(f"{out / name}  {len(files[name].encode('utf-8')):>8} bytes")
    return manifest


def _other_tasks(out: Path) -> tuple[dict, dict[str, str]]:
    """Manifest entries and files of tasks that other builders wrote (course_qa), kept by a rebuild.

    Read from ``out``'s manifest, or from the committed directory's when ``out`` has none yet."""
    source = out if (out / "manifest.json").is_file() else TASK_DIR
    if not (source / "manifest.json").is_file():
        return {}, {}
    old = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    entries = {task: entry for task, entry in old.get("tasks", {}).items() if task not in TASKS}
    files = {name: (source / name).read_text(encoding="utf-8") for name in old.get("files", {})
             if name.rsplit(".", 1)[0] in entries and (source / name).is_file()}
    return entries, files


def load_docs(task: str, task_dir: Path | str | None = None) -> list[dict]:
    """The documents of ``task`` as stored in the task directory."""
    _check_tasks([task])
    path = Path(task_dir or TASK_DIR) / f"{task}.jsonl"
    _check_data(Path(task_dir or TASK_DIR), [task])
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _check_tasks(tasks) -> list[str]:
    if isinstance(tasks, str):
        tasks = [tasks]
    valid = (*TASKS, GROUP, QA_TASK)
    unknown = [t for t in tasks if t not in valid]
    if unknown or not tasks:
        raise ValueError(f"unknown task {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"valid names are: {', '.join(valid)}")
    expanded: list[str] = []
    for t in tasks:
        for name in TASKS if t == GROUP else (t,):
            if name not in expanded:
                expanded.append(name)
    return expanded


def _check_data(task_dir: Path, tasks) -> None:
    for task in tasks:
        for name in (f"{task}.yaml", f"{task}.jsonl", f"{LOADER_MODULE}.py"):
            if not (task_dir / name).is_file():
                raise TaskDataMissingError(
                    f"{task_dir / name} is missing: the lm-eval task data has not been built. "
                    f"Create it with: {BUILD_COMMANDS.get(task, BUILD_COMMAND)}")


class _DropCustomDatasetHint(logging.Filter):
    """lm-eval warns about ``--metadata`` whenever a task has a ``custom_dataset``: not relevant here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


def _max_positions(model) -> int | None:
    c = model.config
    return getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)


def evaluate(model, tokenizer, tasks=TASKS, limit: int | float | None = None, batch_size: int = 16,
             *, max_length: int | None = None, task_dir: Path | str | None = None, seed: int = 0,
             raw: bool = False, stderr: bool = False) -> dict:
    """Run the course tasks with ``lm_eval.simple_evaluate`` on an in-memory model.

    Returns the headline metrics as floats: ``word_perplexity``, ``byte_perplexity`` and
    ``bits_per_byte`` (course_ppl), ``acc``, ``acc_norm`` and ``acc_mutual_info`` (course_nextline),
    for the tasks run; ``qa_acc`` and ``qa_acc_norm`` for course_qa. ``stderr=True`` adds lm-eval's
    standard error of each as ``<key>_stderr`` (NaN where lm-eval gives none: the perplexities).
    ``limit`` caps the documents per task (an int, or a fraction of each task). ``max_length`` is
    lm-eval's window (default: the model's positions); a passage longer than it is scored in
    rolling windows. ``raw=True``
    returns lm-eval's full result dict instead. Seeds are fixed and the hub and datasets are
    offline (course_lib sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE on import).
    """
    import os

    names = _check_tasks(tasks)
    task_dir = Path(task_dir or TASK_DIR)
    _check_data(task_dir, names)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    max_length = max_length or _max_positions(model)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              max_length=max_length, device=str(next(model.parameters()).device))
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    was_training = model.training
    quiet = _DropCustomDatasetHint()
    task_logger = logging.getLogger("lm_eval.api.task")
    task_logger.addFilter(quiet)
    try:
        # bootstrap_iters > 0 only switches on the closed-form stderr of the accuracies: none of
        # these metrics is bootstrapped, so no worker processes are started.
        results = simple_evaluate(
            model=lm, tasks=names, task_manager=manager, limit=limit, log_samples=False,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed, bootstrap_iters=1000,
        )
    finally:
        task_logger.removeFilter(quiet)
        model.train(was_training)
    if raw:
        return results
    scores: dict[str, float] = {}
    for task in names:
        row = results["results"][task]
        for metric in METRICS[task]:
            key = KEY_PREFIX.get(task, "") + metric
            scores[key] = float(row[f"{metric},none"])
            if stderr:
                se = row.get(f"{metric}_stderr,none")
                scores[f"{key}_stderr"] = float(se) if isinstance(se, (int, float)) else math.nan
    return scores


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for z = 1.96) of a proportion: `successes` of `n` items.

    An accuracy measured on n items is a binomial proportion; on 16 items one item is 6 points. Pass
    ``acc * n`` as `successes` (rounded to the nearest whole item)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of items, got {n!r}.")
    k = round(successes)
    if not 0 <= k <= n:
        raise ValueError(f"successes must be between 0 and n = {n}, got {successes!r}.")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def items_evaluated(task: str, limit: int | float | None = None) -> int:
    """How many documents of `task` an evaluation with lm-eval's `limit` scores (an int caps the count, a
    float below 1 is a fraction, None means all), counted from the stored task data."""
    n = len(load_docs(task))
    if limit is None:
        return n
    return min(n, int(limit) if limit >= 1 else math.ceil(n * limit))  # lm-eval's own rounding


def gold_positions(task: str = NEXTLINE_TASK, limit: int | None = None) -> list[int]:
    """How often the true next line sits at each position (0..N_CHOICES-1) among the first `limit` items:
    a task whose answers cluster at one position would reward a position bias."""
    counts = [0] * N_CHOICES
    for doc in load_docs(task)[:limit]:
        counts[doc["label"]] += 1
    return counts


def _show(path: Path, relative_to: Path | None) -> str:
    path = Path(path).expanduser().resolve()
    if relative_to is not None:
        try:
            return path.relative_to(Path(relative_to).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def cli_command(model_dir: Path | str | None = None, out_dir: Path | str | None = None, *,
                tasks=TASKS, limit: int | float | None = None, batch_size: int = 16,
                device: str = "cpu", task_dir: Path | str | None = None,
                relative_to: Path | str | None = REPO_ROOT) -> str:
    """The ``lm_eval`` command line that runs the same evaluation on a saved model directory.

    ``model_dir`` defaults to the bundled model, ``out_dir`` (optional) becomes ``--output_path``.
    Paths inside ``relative_to`` (the repository root by default: run the command from there) are
    written relative to it, so the command can be shown in committed notebooks; pass
    ``relative_to=None`` for absolute paths. The environment prefix keeps the hub and datasets offline.
    """
    from .models import BUNDLED_DIR

    names = _check_tasks(tasks)
    model_dir = Path(model_dir or BUNDLED_DIR)
    task_dir = Path(task_dir or TASK_DIR)
    args = [
        "HF_HUB_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "TRANSFORMERS_OFFLINE=1",
        "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={_show(model_dir, relative_to)},dtype=float32",
        "--tasks", ",".join(names),
        "--include_path", _show(task_dir, relative_to),
        "--device", device, "--batch_size", str(batch_size),
    ]
    if limit is not None:
        args += ["--limit", str(limit)]
    if out_dir is not None:
        args += ["--output_path", _show(Path(out_dir), relative_to)]
    return " ".join(shlex.quote(a) for a in args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.lm.eval_tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the task data and YAMLs")
    b.add_argument("--out", type=Path, default=TASK_DIR, help="task directory (default: data/lm_eval)")
    c = sub.add_parser("cli", help="print the equivalent lm_eval command line")
    c.add_argument("--model", type=Path, default=None)
    c.add_argument("--limit", type=float, default=None)
    args = parser.parse_args(argv)
    if args.command == "build":
        manifest = build(args.out, verbose=True)
        counts = ", ".join(f"{t}: {next(iter(v.values()))}" for t, v in manifest["tasks"].items())
        print(f"built {counts}")
    else:
        limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
        print(cli_command(args.model, limit=limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
