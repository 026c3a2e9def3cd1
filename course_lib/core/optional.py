"""Optional libraries: is one here, and what a notebook shows when it is not.

The compression libraries (GPTQModel, llm-compressor, optimum, bitsandbytes, torchao, lm-eval)
are extras of the course. `make lab` installs them all; Colab's bootstrap tries each one and
some may not install there. A notebook cell that needs one runs through `live_or_recorded`:

    rows = live_or_recorded("nb03_gptqmodel", run_gptqmodel, needs=["gptqmodel", "optimum"],
                            what="GPTQModel's quantization")

* every library here: it runs ``run()`` and returns what it returns (JSON-like: dicts, lists,
  numbers, strings), so the cell prints it;
* one missing: it prints one line that names the library and how to install it, and returns the
  result that the canonical run recorded in ``data/results/recorded/<key>.json``, so the rest of
  the cell prints the same table from the recording.

`make outputs` (the canonical run, with ``COURSE_RECORD=1``) writes those recordings, so they are
always the numbers of the stored outputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from .env import REPO_ROOT

RECORDED_DIR = REPO_ROOT / "data" / "results" / "recorded"

# import name -> (pip name, course extra that installs it)
LIBRARIES = {
    "gptqmodel": ("gptqmodel", "compress"),
    "llmcompressor": ("llmcompressor", "compress"),
    "compressed_tensors": ("compressed-tensors", "compress"),
    "optimum": ("optimum", "compress"),
    "bitsandbytes": ("bitsandbytes", "compress"),
    "peft": ("peft", "compress"),
    "torchao": ("torchao", "compress"),
    "lm_eval": ("lm-eval", "eval"),
    "triton": ("triton", "test"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "openai": ("openai", "serve"),
}


def missing(*modules: str) -> list[str]:
    """The named top-level modules that cannot be imported here, in the order given."""
    gone = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a blocked or broken package
            found = False
        if not found:
            gone.append(name)
    return gone


def have(*modules: str) -> bool:
    """True when every named module can be imported here."""
    return not missing(*modules)


def install_hint(modules: Sequence[str]) -> str:
    """`pip install ...` for the given modules, with the course extra that carries them."""
    pips = [LIBRARIES.get(m, (m, None))[0] for m in modules]
    extras = sorted({LIBRARIES[m][1] for m in modules if m in LIBRARIES})
    hint = f"pip install {' '.join(pips)}"
    if extras:
        hint += f" (or the course's [{','.join(extras)}] extra)"
    return hint


def missing_line(modules: Sequence[str], what: str) -> str:
    """One line for a notebook: which library is missing, what is skipped, how to get it."""
    names = ", ".join(modules)
    verb = "is" if len(modules) == 1 else "are"
    return f"{names} {verb} not installed in this kernel, so {what} did not run here; {install_hint(modules)}."


def recorded_path(key: str):
    return RECORDED_DIR / f"{key}.json"


def _recording() -> bool:
    return os.environ.get("COURSE_RECORD") == "1"


def live_or_recorded(key: str, run: Callable[[], Any], *, needs: Sequence[str], what: str) -> Any:
    """run() when every library in `needs` is here; otherwise say so in one line and return the recording.

    key:  names the recording, data/results/recorded/<key>.json (written by the canonical run).
    run:  returns JSON-like data (it goes through json, so tuples come back as lists).
    what: what the cell does with the library, for the one-line message ("GPTQModel's quantization").
    """
    gone = missing(*needs)
    if not gone:
        result = json.loads(json.dumps(run()))  # the same types as a recording would give
        if _recording():
            path = recorded_path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"key": key, "needs": list(needs), "what": what, "result": result},
                                       indent=1, sort_keys=True) + "\n")
        return result
    print(missing_line(gone, what) + " Showing the result recorded by the course's canonical run.")
    path = recorded_path(key)
    if not path.exists():
        raise FileNotFoundError(f"No recording {path.name} for {what}: run `make outputs` with {', '.join(needs)} "
                                f"installed to write it ({install_hint(gone)}).")
    return json.loads(path.read_text())["result"]
