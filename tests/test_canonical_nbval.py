"""The whole loop on a tiny notebook: canonical execution stores outputs, nbval replays them,
re-executing changes nothing, and editing one stored number makes nbval fail."""

import subprocess
import sys

import nbformat
import pytest

from course_lib.core import canonical
from course_lib.core.env import REPO_ROOT

pytestmark = pytest.mark.slow


def make_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# tiny"),
        nbformat.v4.new_code_cell("import os, sys\nprint(os.environ['PYTHONHASHSEED'], os.environ['OMP_NUM_THREADS'])"),
        nbformat.v4.new_code_cell("import torch\ntorch.manual_seed(0)\nprint(round(torch.rand(1).item(), 4))"),
        nbformat.v4.new_code_cell("print('warning text', file=sys.stderr)\nobject()"),
    ]
    nbformat.write(nb, path)


def sanitized(text):
    import re

    from nbval.plugin import get_sanitize_patterns

    for regex, replace in get_sanitize_patterns((REPO_ROOT / "nbval_sanitize.cfg").read_text()):
        text = re.sub(regex, replace, text)
    return text


def run_nbval(path):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "course_lib.core.nbval_plugin",
           "--nbval", "--nbval-current-env", "--nbval-sanitize-with", str(REPO_ROOT / "nbval_sanitize.cfg"),
           "-o", "addopts=", "--rootdir", str(path.parent), str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, env=canonical.canonical_environ(), cwd=path.parent)


def test_execute_replay_and_detect_an_edit(tmp_path):
    path = tmp_path / "tiny.ipynb"
    make_notebook(path)
    assert canonical.main(["execute", str(path)]) == 0
    first = path.read_text()
    nb = nbformat.reads(first, as_version=4)
    assert nb["metadata"]["kernelspec"]["name"] == canonical.KERNEL_NAME
    assert nb["cells"][1]["outputs"][0]["text"] == "0 1\n"  # the canonical pins reached the kernel
    assert "0x" in str(nb["cells"][3]["outputs"])  # an address, sanitized by nbval

    result = run_nbval(path)
    assert result.returncode == 0, result.stdout[-2000:]

    assert canonical.main(["execute", str(path)]) == 0
    assert sanitized(path.read_text()) == sanitized(first), "re-executing changed a checked output"

    number = nb["cells"][2]["outputs"][0]["text"]
    nb["cells"][2]["outputs"][0]["text"] = number.replace(number.strip()[-1], str((int(number.strip()[-1]) + 1) % 10))
    nbformat.write(nb, path)
    result = run_nbval(path)
    assert result.returncode != 0, "nbval accepted an edited stored number"
