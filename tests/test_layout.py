"""course_lib's layout: no import circles, and each layer imports only the layers beneath it.

The layers (README, "How the code is organised"), lowest first:
  core      the course's infrastructure: environment, profiles, canonical runs, tables, plots, results, timers
  lm        the course's language model as the chapters use it: loading, tokens, blocks, perplexity, lm-eval
  pipeline  how the bundled model was built: corpus, tokenizer, training run, card, baselines
  chapters  one package per chapter or idea (formats, quant, gptq, awq, bnb, prune, distill, kv, attention, kernels, memory)
  top       the command line (bench) and the exercises, which may use everything

Imports are read from the source (ast), including the ones inside functions: a lazy import is still
a dependency, and it is how circles hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "course_lib"
LAYERS = {"core": 0, "lm": 1, "pipeline": 2}
CHAPTERS = ("formats", "quant", "gptq", "awq", "bnb", "mixed", "prune", "distill", "kv", "attention", "kernels", "memory", "eval", "serving")
TOP = ("bench", "exercises", "__init__")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = ["course_lib", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The course_lib modules that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub when there is one, else a name of pkg
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def top_package(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(name: str) -> int:
    top = top_package(name)
    if top in LAYERS:
        return LAYERS[top]
    if top in CHAPTERS:
        return 3
    if top in TOP:
        return 4
    raise AssertionError(f"{name}: course_lib/{top} is in no layer. Put it in one of the packages "
                         f"{sorted(LAYERS) + list(CHAPTERS)} or add it to the layers in tests/test_layout.py and the README.")


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, deps in edges.items():
        out.setdefault(top_package(name), set()).update(top_package(d) for d in deps if top_package(d) != top_package(name))
    return out


# --- the checks on course_lib ---

def test_no_import_circle_between_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_import_circle_between_packages():
    pg = package_graph(graph())
    pg.pop("__init__", None)  # the package's front door imports core, which never imports it back (next test)
    cycle = find_cycle(pg)
    assert cycle is None, "package circle: " + " -> ".join(cycle)


def test_every_module_is_in_a_layer_and_imports_only_lower_layers():
    bad = []
    for name, deps in graph().items():
        if top_package(name) == "__init__":
            continue
        for d in deps:
            if top_package(d) == top_package(name):
                continue
            if top_package(d) == "__init__" or layer(d) >= layer(name) and layer(name) < 3:
                bad.append(f"{name} imports {d}")
    assert not bad, "layering broken (core < lm < pipeline < chapters):\n" + "\n".join(sorted(bad))


def test_chapters_do_not_import_the_pipeline_or_the_command_line():
    bad = [f"{n} imports {d}" for n, deps in graph().items() if layer(n) == 3 for d in deps
           if top_package(d) in ("pipeline", "bench", "exercises")]
    assert not bad, "\n".join(sorted(bad))


def test_the_top_level_holds_only_packages_and_the_front_doors():
    loose = sorted(p.name for p in ROOT.glob("*.py") if p.stem not in TOP)
    assert not loose, f"modules loose at course_lib's top level: {loose}; each belongs in a package"


# --- the checker itself: it must see what it is meant to see ---

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "course_lib"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_the_checker_finds_a_circle_through_a_lazy_import(tmp_path):
    root = _tree(tmp_path, {"__init__.py": "", "core/__init__.py": "", "core/a.py": "from .b import x\n",
                            "core/b.py": "def f():\n    from .a import y\n"})
    cycle = find_cycle(graph(root))
    assert cycle is not None and set(cycle) == {"course_lib.core.a", "course_lib.core.b"}


def test_the_checker_resolves_submodule_and_name_imports(tmp_path):
    root = _tree(tmp_path, {"__init__.py": "", "core/__init__.py": "", "core/env.py": "",
                            "gptq/__init__.py": "from .model import run\n", "gptq/model.py": "from ..core import env\n",
                            "awq/__init__.py": "", "awq/x.py": "from ..gptq import run\nimport course_lib.core.env\n"})
    g = graph(root)
    assert g["course_lib.gptq.model"] == {"course_lib.core.env"}
    assert g["course_lib.awq.x"] == {"course_lib.gptq", "course_lib.core.env"}
    assert find_cycle(g) is None
    assert package_graph(g)["awq"] == {"gptq", "core"}


def test_the_checker_finds_a_package_circle_without_a_module_circle(tmp_path):
    root = _tree(tmp_path, {"__init__.py": "", "gptq/__init__.py": "", "gptq/teach.py": "from ..awq import core\n",
                            "gptq/core.py": "", "awq/__init__.py": "", "awq/core.py": "from ..gptq import core\n"})
    g = graph(root)
    assert find_cycle(g) is None
    assert find_cycle(package_graph(g)) is not None


@pytest.mark.parametrize("name, expected", [("course_lib.core.env", 0), ("course_lib.lm.models", 1),
                                            ("course_lib.pipeline.train", 2), ("course_lib.kv.paged", 3),
                                            ("course_lib.bench", 4)])
def test_layers_are_named(name, expected):
    assert layer(name) == expected
