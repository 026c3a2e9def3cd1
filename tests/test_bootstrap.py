"""The first code cell of every notebook: a clear message in a kernel without course_lib, and on
Colab an install of course_lib that pins Colab's own torch (simulated: pip is not really run)."""

import json
import subprocess
import sys
import textwrap

import pytest

from course_lib.env import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def first_code_cell(path):
    cells = json.loads(path.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


BOOTSTRAP = first_code_cell(NOTEBOOKS[0])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_notebook_starts_with_the_same_bootstrap(path):
    assert first_code_cell(path) == BOOTSTRAP


def run_isolated(prelude, cwd):
    # -I -S: no site-packages and no current directory on sys.path, as in a kernel without course_lib.
    code = textwrap.dedent(prelude) + "\n" + BOOTSTRAP
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, cwd=cwd)


def test_wrong_kernel_tells_how_to_select_the_course_kernel(tmp_path):
    result = run_isolated("", tmp_path)
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr and "Change Kernel" in result.stderr
    assert "Python 3 (LLM course)" in result.stderr and "make lab" in result.stderr


def test_colab_installs_course_lib_and_keeps_colabs_torch(tmp_path):
    checkout = tmp_path / "course"
    (checkout / "course_lib").mkdir(parents=True)
    (checkout / "course_lib" / "__init__.py").write_text("")
    (checkout / "notebooks").mkdir()
    prelude = """
        import sys, types, subprocess
        sys.modules["google.colab"] = types.ModuleType("google.colab")
        sys.modules["torch"] = types.SimpleNamespace(__version__="2.9.0+cu126")
        calls = []
        subprocess.run = lambda cmd, check: calls.append(cmd)
        import atexit
        atexit.register(lambda: print("PIP", calls))
    """
    result = run_isolated(prelude, checkout / "notebooks")
    assert result.returncode == 0, result.stderr
    assert (checkout / ".keep-torch.txt").read_text() == "torch==2.9.0+cu126\n"
    assert "'install'" in result.stdout and "[notebooks]" in result.stdout and ".keep-torch.txt" in result.stdout
