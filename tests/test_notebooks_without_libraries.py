"""Every notebook runs top to bottom where the compared libraries are missing (as on a Colab runtime
where one did not install): a cell that needs one says so in one line and shows the recorded result.

The libraries are hidden from the kernel by a sitecustomize that fails their import and their
package metadata, which is what transformers and course_lib.core.optional look at.
"""

from __future__ import annotations

import json

import pytest

from course_lib.core.env import REPO_ROOT
from course_lib.core.optional import LIBRARIES

pytestmark = pytest.mark.slow

# Every notebook whose bootstrap names a library, plus those that import one on their own.
def _bootstrap_libraries(path) -> list[str]:
    cell = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    line = next(line for line in cell["source"] if line.startswith("LIBRARIES = "))
    return json.loads(line.split("=", 1)[1].split("#", 1)[0])


NOTEBOOKS = sorted(p for p in (REPO_ROOT / "notebooks").glob("*.ipynb") if _bootstrap_libraries(p))
BLOCKED = sorted(set(LIBRARIES) - {"triton"} | {"awq"})

SITECUSTOMIZE = '''
import importlib.metadata as _md
import os
import sys

_BLOCKED = set(os.environ["COURSE_BLOCK_MODULES"].split(","))
_DISTS = {name.replace("_", "-") for name in _BLOCKED} | _BLOCKED


class _Blocker:
    """Fails the import of a blocked package, as if it were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
# None in sys.modules is Python's own "not installed": importlib.util.find_spec returns None (what transformers'
# is_*_available checks expect; a finder that raises would break `import transformers`) and import fails
sys.modules.update(dict.fromkeys(_BLOCKED))
_distribution = _md.distribution


def _hidden_distribution(name):
    if name.lower().replace("_", "-") in _DISTS:
        raise _md.PackageNotFoundError(name)
    return _distribution(name)


_md.distribution = _hidden_distribution
'''


def test_the_blocker_hides_a_library(tmp_path, monkeypatch):
    import subprocess
    import sys

    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": str(tmp_path), "COURSE_BLOCK_MODULES": "tqdm"}
    code = ("import importlib.metadata as m, importlib.util as u\n"
            "try:\n    import tqdm\n    print('imported')\nexcept ImportError:\n    print('blocked')\n"
            "try:\n    m.version('tqdm')\nexcept m.PackageNotFoundError:\n    print('no metadata')\n"
            "from course_lib.core.optional import missing; print(missing('tqdm', 'json'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, **env}).stdout.split()
    assert out[:3] == ["blocked", "no", "metadata"] and "['tqdm']" in out[-1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_its_libraries(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from course_lib.core.canonical import canonical_environ

    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = canonical_environ()
    env.pop("COURSE_RECORD", None)  # never rewrite the recordings from a crippled kernel
    env.update(PYTHONPATH=str(tmp_path), COURSE_BLOCK_MODULES=",".join(BLOCKED))
    for key in list(__import__("os").environ):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [(i, o.get("ename"), o.get("evalue", "")[:300]) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{path.name} fails without {', '.join(BLOCKED)}: {errors}"
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.output_type == "stream")
    assert "not installed in this kernel" in text, f"{path.name} never said that a library was missing"
