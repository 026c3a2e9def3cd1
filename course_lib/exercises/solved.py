"""A chapter's notebook with the reference solutions filled in, for instructors (and for the tests).

    python -m course_lib.exercises.solved notebooks/03_gptq.ipynb              # -> solved/03_gptq.ipynb
    python -m course_lib.exercises.solved notebooks/03_gptq.ipynb --execute    # and run it

Every exercise cell of a notebook holds a stub, ``def name(...): raise NotImplementedError``, then the
check. The solved copy replaces each stub by the function of the same name from ``solutions/chNN.py``
(its source, preceded by that file's imports), so the checks print "correct". The notebook itself is not
changed: the copy goes to ``solved/`` (ignored by git) unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from pathlib import Path

from ..core.env import REPO_ROOT
from . import load_solutions

IMPORT_CELL = re.compile(r"from course_lib\.exercises import (ch\d\d)\b")


CHECK_CALL = re.compile(r"check_(\w+)\(\s*(\w+)\s*\)")


def _is_stub_raise(node: ast.stmt) -> bool:
    if not isinstance(node, ast.Raise):
        return False
    exc = node.exc
    name = exc.func.id if isinstance(exc, ast.Call) and isinstance(exc.func, ast.Name) else \
        exc.id if isinstance(exc, ast.Name) else None
    return name == "NotImplementedError"


def stubs(source: str) -> list[ast.FunctionDef]:
    """The top-level functions of a cell whose body ends with ``raise NotImplementedError`` (the exercise stubs;
    a stub may set something up before it, such as a table the learner will need)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [node for node in tree.body if isinstance(node, ast.FunctionDef) and _is_stub_raise(node.body[-1])]


def chapter_of(cells: list[dict]) -> str | None:
    """The chapter whose checks the notebook imports ("ch03"), or None for a notebook without exercises."""
    for cell in cells:
        if cell["cell_type"] == "code":
            m = IMPORT_CELL.search("".join(cell["source"]))
            if m:
                return m.group(1)
    return None


def _support(module, name: str) -> str:
    """The solutions file's imports, then the top-level helpers and constants that `name` needs (transitively)."""
    text = inspect.getsource(module)
    tree, lines = ast.parse(text), text.splitlines()
    source_of = lambda n: "\n".join(lines[n.lineno - 1 - len(getattr(n, "decorator_list", [])):n.end_lineno])
    imports = [source_of(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
               and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    defined = {}
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
            defined[n.name] = n
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                if isinstance(t, ast.Name):
                    defined[t.id] = n
    needed, todo = [], [defined[name]]
    while todo:
        node = todo.pop()
        for ref in {x.id for x in ast.walk(node) if isinstance(x, ast.Name)}:
            dep = defined.get(ref)
            if dep is not None and dep is not defined[name] and dep not in needed:
                needed.append(dep)
                todo.append(dep)
    helpers = [source_of(n) for n in sorted(needed, key=lambda n: n.lineno)]
    return "\n".join(imports) + ("\n\n\n" + "\n\n\n".join(helpers) if helpers else "")


def solve_source(source: str, solutions) -> tuple[str, list[str]]:
    """The cell's source with every stub replaced by its reference solution; and the exercises solved.

    A stub's exercise is the one whose check the cell calls with it (``check_NAME(stub)``), else the stub's name.
    """
    found = stubs(source)
    if not found:
        return source, []
    exercise_of = {stub: name for name, stub in CHECK_CALL.findall(source)}
    lines = source.splitlines()
    names, support = [], []
    for node in sorted(found, key=lambda n: n.lineno, reverse=True):
        name = exercise_of.get(node.name, node.name)
        if not hasattr(solutions, name):
            raise LookupError(f"solutions has no function {name!r} for the stub {node.name!r} in this notebook.")
        code = inspect.getsource(getattr(solutions, name)).rstrip("\n").splitlines()
        if name != node.name:
            code.append(f"{node.name} = {name}")
        start = node.lineno - 1 - len(node.decorator_list)
        lines[start:node.end_lineno] = code
        names.append(name)
        support.append(_support(solutions, name))
    head = "\n\n".join(dict.fromkeys(support[::-1]))
    return head + "\n\n\n" + "\n".join(lines), names[::-1]


def solved_notebook(path: Path) -> tuple[dict, list[str]]:
    """(the notebook as a dict with the stubs solved, the names of the solved exercises)."""
    import json

    nb = json.loads(Path(path).read_text())
    chapter = chapter_of(nb["cells"])
    if chapter is None:
        return nb, []
    solutions = load_solutions(chapter)
    solved = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source, names = solve_source("".join(cell["source"]), solutions)
        if names:
            cell["source"] = source.splitlines(True)
            cell["outputs"], cell["execution_count"] = [], None
            solved += names
    return nb, solved


def execute(path: Path, workdir: Path) -> float:
    """Run a solved copy in place, as the canonical run does but without recording any result (the recordings
    belong to the notebooks as shipped); `workdir` is the original notebook's folder. Returns seconds."""
    import os
    import time

    import nbformat
    from nbclient import NotebookClient

    from ..core.canonical import CELL_TIMEOUT_S, canonical_environ

    nb = nbformat.read(path, as_version=4)
    env = canonical_environ()
    env.pop("COURSE_RECORD", None)
    os.environ.clear()
    os.environ.update(env)
    start = time.perf_counter()
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(workdir).resolve())}}).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.exercises.solved", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "solved", help="folder for the solved copies")
    parser.add_argument("--execute", action="store_true", help="run each solved copy in the canonical environment")
    args = parser.parse_args(argv)
    import json

    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.notebooks:
        nb, names = solved_notebook(path)
        if not names:
            print(f"{path.name}: no exercise stubs found; nothing to solve.")
            continue
        target = args.out / path.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{path.name}: solved {', '.join(names)} -> {target}")
        if args.execute:
            print(f"  executed in {execute(target, workdir=path.parent):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
