"""Exercise checks that a learner calls from a notebook.

Each chapter module defines ``check_*`` functions and lists them in ``EXERCISES``. A check calls
the learner's function on a few cases, prints one line per outcome and returns True or False:

* "not attempted yet" while the function still raises NotImplementedError (the stub),
* "wrong" with the first failing case and a hint,
* "correct" when every case matches.

A check never raises, so a notebook with unsolved exercises still runs top to bottom.
Reference solutions live in ``solutions/`` at the repository root, out of the learner's way;
tests/test_exercises.py proves each solution passes its check and each stub fails it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


def check_cases(
    title: str,
    fn: Callable[..., Any],
    cases: Sequence[tuple[tuple, Any]],
    *,
    rel: float = 1e-3,
    hint: str = "",
) -> bool:
    """Run fn(*args) for each (args, expected); print the outcome; True when all match."""
    for args, expected in cases:
        try:
            got = fn(*args)
        except NotImplementedError:
            print(f"[ ] {title}: not attempted yet. Write your solution above and run this cell again.")
            return False
        except Exception as exc:  # the learner's code failed: say how, don't crash the notebook
            print(f"[x] {title}: calling it with {args} raised {type(exc).__name__}: {exc}")
            return False
        if not _close(got, expected, rel):
            print(f"[x] {title}: for {args} expected {expected!r}, got {got!r}." + (f" Hint: {hint}" if hint else ""))
            return False
    print(f"[ok] {title}: correct ({len(cases)} cases).")
    return True


def _close(got: Any, expected: Any, rel: float) -> bool:
    if isinstance(expected, float) or isinstance(got, float):
        try:
            return math.isclose(float(got), float(expected), rel_tol=rel, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return got == expected
