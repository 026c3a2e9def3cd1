"""Exercise checks that a learner calls from a notebook.

Each chapter module defines ``check_*`` functions and lists them in ``EXERCISES``. A check calls
the learner's function on a few cases, prints one line per outcome and returns True or False:

* "not attempted yet" while the function still raises NotImplementedError (the stub),
* "wrong" with the first failing case and a hint,
* "correct" when every case matches.

Two helpers do the work:

* ``check_cases`` for scalar formulas: fixed (args, expected) pairs, compared with a relative tolerance;
* ``check_tensor_cases`` for exercises that implement part of an algorithm on tensors: the learner's
  function and a course_lib reference run on the same inputs (random tensors from fixed seeds, in several
  shapes, plus edge cases), compared like torch.allclose (the shape must match too). The learner gets
  copies of the inputs, so an in-place edit cannot change the reference. After a wrong attempt, an
  optional ``diagnose`` names the likely mistake when it recognises one; otherwise the general hint shows.

A check never raises, so a notebook with unsolved exercises still runs top to bottom.
Reference solutions live in ``solutions/`` at the repository root, out of the learner's way
(``load_solutions("ch11")`` imports one chapter's, for instructors and tests);
tests/test_exercises.py proves each solution passes its check and each stub fails it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


def load_solutions(chapter: str):
    """The module of reference solutions solutions/<chapter>.py (e.g. "ch11"), imported from its file."""
    import importlib.util

    from ..core.env import REPO_ROOT

    path = REPO_ROOT / "solutions" / f"{chapter}.py"
    if not path.is_file():
        raise FileNotFoundError(f"No reference solutions at {path}: they ship with a clone of the repository.")
    spec = importlib.util.spec_from_file_location(f"solutions_{chapter}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        ok, got = _call(title, fn, args, f"calling it with {args}")
        if not ok:
            return False
        if not _close(got, expected, rel):
            print(f"[x] {title}: for {args} expected {expected!r}, got {got!r}." + (f" Hint: {hint}" if hint else ""))
            return False
    print(f"[ok] {title}: correct ({len(cases)} cases).")
    return True


def _call(title: str, fn: Callable[..., Any], args: tuple, where: str) -> tuple[bool, Any]:
    """(True, fn(*args)), or (False, None) after printing "not attempted yet" (the stub) or the learner's error."""
    try:
        return True, fn(*args)
    except NotImplementedError:
        print(f"[ ] {title}: not attempted yet. Write your solution above and run this cell again.")
    except Exception as exc:  # the learner's code failed: say how, don't crash the notebook
        print(f"[x] {title}: {where} raised {type(exc).__name__}: {exc}")
    return False, None


def _close(got: Any, expected: Any, rel: float) -> bool:
    if isinstance(expected, float) or isinstance(got, float):
        try:
            return math.isclose(float(got), float(expected), rel_tol=rel, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return got == expected


def check_tensor_cases(
    title: str,
    fn: Callable[..., Any],
    cases: Sequence[tuple],
    reference: Callable[..., Any],
    *,
    atol: float,
    rtol: float,
    hint: str = "",
    diagnose: Callable[[tuple, Any], str | None] | None = None,
    labels: Sequence[str] | None = None,
) -> bool:
    """Run fn(*args) for each argument tuple in `cases` and compare with reference(*args); print the outcome.

    A value matches when |got - expected| <= atol + rtol * |expected| (torch.allclose; NaN never matches)
    and got is a tensor of the expected shape (any real dtype: both are compared in float64). fn gets
    clones of tensor arguments. On the first mismatch it prints the case (labels[i], or the arguments'
    shapes), the worst entry and a hint: diagnose(args, got) when that returns a string (it is called only
    for a tensor of the right shape, and its own errors are ignored), else `hint`. True when all match.
    """
    import torch

    def compare(got: Any, expected: Any) -> tuple[str, Any]:
        problem, comparable = _tensor_mismatch(got, expected, atol, rtol, torch)
        return problem, (got if comparable else None)

    labels = list(labels) if labels is not None else [_describe_args(args) for args in cases]
    return check_against(title, fn, cases, reference, compare, labels=labels, hint=hint, diagnose=diagnose)


def check_against(title: str, fn: Callable[..., Any], cases: Sequence[tuple], reference: Callable[..., Any],
                  compare: Callable[[Any, Any], tuple[str, Any]], *, labels: Sequence[str], hint: str = "",
                  diagnose: Callable[[tuple, Any], str | None] | None = None) -> bool:
    """The loop behind every check: run fn(*args) for each case, compare with reference(*args), print the outcome.

    compare(got, expected) returns ('', _) when got matches, else (what is wrong, got in a comparable form or
    None). fn gets copies of tensor, list and dict arguments. After the first mismatch, diagnose(args, comparable
    got) may name the mistake (only when got was comparable; its own errors are ignored), otherwise `hint` shows.
    True when every case matches.
    """
    if len(labels) != len(cases):
        raise ValueError(f"{len(labels)} labels for {len(cases)} cases.")
    for label, args in zip(labels, cases):
        expected = reference(*_clone_args(args))
        ok, got = _call(title, fn, _clone_args(args), f"for {label} it")
        if not ok:
            return False
        try:
            problem, comparable = compare(got, expected)
        except Exception as exc:  # e.g. a tensor that cannot be copied to the CPU, an answer too odd to compare
            problem, comparable = f"its result could not be compared ({type(exc).__name__}: {exc}).", None
        if problem:
            specific = None
            if comparable is not None and diagnose is not None:
                try:
                    specific = diagnose(args, comparable)
                except Exception:  # a diagnosis is a bonus; never let it hide the result
                    specific = None
            text = specific or hint
            print(f"[x] {title}: for {label}: {problem}" + (f" Hint: {text}" if text else ""))
            return False
    print(f"[ok] {title}: correct ({len(cases)} cases).")
    return True


def _clone_args(args: tuple) -> tuple:
    """Copies of tensor, list and dict arguments: the learner's function cannot change the reference's inputs."""
    import torch

    return tuple(a.clone() if isinstance(a, torch.Tensor) else a.copy() if isinstance(a, (list, dict)) else a
                 for a in args)


def _describe_args(args: tuple) -> str:
    return "(" + ", ".join(f"a tensor of shape {tuple(a.shape)}" if hasattr(a, "shape") else repr(a)
                           for a in args) + ")"


def _tensor_mismatch(got: Any, expected: Any, atol: float, rtol: float, torch: Any) -> tuple[str, bool]:
    """('', True) when got matches; else (what is wrong, whether got is a tensor of the right shape)."""
    shape = tuple(expected.shape)
    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor of shape {shape}, got {type(got).__name__} {_short(got)}.", False
    if tuple(got.shape) != shape:
        return f"expected a tensor of shape {shape}, got one of shape {tuple(got.shape)}.", False
    if got.is_complex() or got.dtype == torch.bool:
        return f"expected real numbers, got a tensor of dtype {got.dtype}.", False
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    ok = torch.isclose(g, e, rtol=rtol, atol=atol)
    if bool(ok.all()):
        return "", True
    bad = ~ok
    n_nan = int(torch.isnan(g).sum())
    err = torch.where(bad, (g - e).abs().nan_to_num(nan=float("inf")), torch.zeros_like(g))
    flat = int(err.reshape(-1).argmax())
    where = _unravel(flat, shape)
    gv, ev = g.reshape(-1)[flat].item(), e.reshape(-1)[flat].item()
    text = (f"{int(bad.sum())} of {e.numel()} values differ; the worst, at index {where}: expected {ev:.6g}, "
            f"got {gv:.6g} (tolerance: atol {atol:g} + rtol {rtol:g} * |expected|).")
    if n_nan:
        text += f" {n_nan} values are NaN."
    return text, True


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index tuple of entry `flat` of a C-ordered tensor (torch.unravel_index imports sympy: slow once)."""
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."
