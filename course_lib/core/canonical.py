"""The canonical run: the one pinned environment that produces and checks stored notebook outputs.

    python -m course_lib.core.canonical run -- pytest          # run a command in the canonical env
    python -m course_lib.core.canonical execute notebooks/*.ipynb   # re-execute notebooks in place

The environment is ``env.CANONICAL_ENV`` (1 thread, PYTHONHASHSEED=0, no GPU visible, progress
bars off) on top of ``env.LIBRARY_ENV``. `make outputs` and `make test` both go through here, so
nbval replays exactly the run that wrote the outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .env import CANONICAL_ENV, apply_library_env

KERNEL_NAME = "llm-course"
KERNEL_DISPLAY_NAME = "Python 3 (LLM course)"
CELL_TIMEOUT_S = 600


def canonical_environ(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default os.environ) with the library defaults and the canonical pins."""
    saved = dict(os.environ)
    try:
        if base is not None:
            os.environ.clear()
            os.environ.update(base)
        apply_library_env()
        env = dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    env.update(CANONICAL_ENV)
    return env


def execute_notebook(path: Path, timeout: int = CELL_TIMEOUT_S) -> float:
    """Execute one notebook in place under the canonical environment; returns seconds taken."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    os.environ.clear()
    os.environ.update(canonical_environ())
    os.environ["COURSE_RECORD"] = "1"  # cells run through course_lib.core.optional record their results for kernels without a library
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",  # ipykernel's own spec: this interpreter, like nbval --nbval-current-env
        resources={"metadata": {"path": str(path.parent.resolve())}},
        record_timing=False,
        store_widget_state=False,
    )
    client.execute()
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": KERNEL_DISPLAY_NAME, "language": "python"}
    nbformat.write(nb, path)
    return time.perf_counter() - start


def _execute_one(path: str) -> tuple[str, float, str | None]:
    try:
        return path, execute_notebook(Path(path)), None
    except Exception as exc:  # report every failing notebook, not just the first
        return path, 0.0, f"{type(exc).__name__}: {str(exc)[-3000:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.core.canonical", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a command in the canonical environment")
    run.add_argument("command", nargs=argparse.REMAINDER)
    exe = sub.add_parser("execute", help="re-execute notebooks in place")
    exe.add_argument("notebooks", nargs="+", type=Path)
    exe.add_argument("-j", "--jobs", type=int, default=1, help="notebooks executed at once")
    args = parser.parse_args(argv)

    if args.cmd == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run needs a command, e.g. `run -- pytest`")
        os.execvpe(command[0], command, canonical_environ())

    missing = [str(p) for p in args.notebooks if not p.exists()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    paths = [str(p) for p in args.notebooks]
    failed = 0
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for path, seconds, error in pool.map(_execute_one, paths):
            if error:
                failed += 1
                print(f"FAILED {path}\n{error}", file=sys.stderr)
            else:
                print(f"executed {path} in {seconds:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
