"""Stored notebooks are what the canonical run wrote, and nothing nbval would silently skip.

nbval skips a code cell that was never executed and happily compares against a stored error, so
these checks fail on exactly those, plus machine-specific paths, huge outputs and the wrong kernel.
"""

import json
import re

import pytest

from course_lib.core.canonical import KERNEL_NAME
from course_lib.core.env import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
MAX_TEXT_OUTPUT = 20_000  # characters in one text output
MAX_IMAGE_OUTPUT = 400_000  # base64 characters in one image
MAX_NOTEBOOK = 3_000_000  # bytes of the whole file
MACHINE_PATH = re.compile(r"(/home/|/root/|/tmp/|/work/|/Users/|/private/var/|/var/folders/|/content/|[A-Z]:\\\\Users)")
CJK = re.compile(r"[\u4e00-\u9fff]")


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def text_of(output):
    if output["output_type"] == "stream":
        return "".join(output["text"])
    data = output.get("data", {})
    return "".join("".join(v) if isinstance(v, list) else str(v) for k, v in data.items() if not k.startswith("image/"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
    assert [p.name[:3] for p in NOTEBOOKS] == sorted(p.name[:3] for p in NOTEBOOKS)
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", p.name) for p in NOTEBOOKS)


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def nb(request):
    assert request.param.stat().st_size < MAX_NOTEBOOK, f"{request.param.name} is larger than {MAX_NOTEBOOK} bytes"
    return json.loads(request.param.read_text())


def test_kernel_is_the_course_kernel(nb):
    assert nb["metadata"]["kernelspec"]["name"] == KERNEL_NAME


def test_every_code_cell_ran_in_order(nb):
    counts = [c["execution_count"] for c in code_cells(nb)]
    assert None not in counts, "a code cell was never executed: nbval would skip it. Run `make outputs`."
    assert counts == list(range(1, len(counts) + 1)), "cells were not run once, top to bottom: run `make outputs`"


def test_no_errors_and_nothing_meaningful_on_stderr(nb):
    for cell in code_cells(nb):
        for out in cell["outputs"]:
            assert out["output_type"] != "error", f"stored error in cell: {''.join(cell['source'])[:80]}"


def test_no_machine_paths_or_huge_outputs(nb):
    for cell in code_cells(nb):
        for out in cell["outputs"]:
            text = text_of(out)
            assert not MACHINE_PATH.search(text), f"machine-specific path in output: {MACHINE_PATH.search(text)[0]}"
            assert len(text) <= MAX_TEXT_OUTPUT, f"text output of {len(text)} characters"
            for key, value in out.get("data", {}).items():
                if key.startswith("image/"):
                    assert len("".join(value)) <= MAX_IMAGE_OUTPUT, f"{key} output too large"


def test_no_live_widget_or_display_updates(nb):
    assert "widgets" not in nb["metadata"], "stored widget state; the canonical run does not store it"
    for cell in code_cells(nb):
        source = "".join(cell["source"])
        assert "clear_output" not in source or "nbval-skip" in cell["metadata"].get("tags", []), (
            "clear_output breaks nbval's comparison"
        )
        for out in cell["outputs"]:
            assert out["output_type"] != "update_display_data"


def test_ignored_outputs_are_few(nb):
    cells = code_cells(nb)
    ignored = [c for c in cells if "nbval-ignore-output" in c["metadata"].get("tags", [])]
    assert len(ignored) <= max(2, len(cells) // 4), "most numbers that teach must be checked by nbval"


def test_first_cell_names_the_source_sections(nb):
    first = nb["cells"][0]
    text = "".join(first["source"])
    assert first["cell_type"] == "markdown" and "Source sections" in text
    assert CJK.search(text), "list the seeds' section titles in Chinese, as the chapter convention says"
