"""Results recorded on a GPU, stored as data, shown by notebooks; measured live when CUDA is here.

A GPU benchmark runs once on the course's GPU machine (``make bench``) and is committed as
``data/results/<name>.json``::

    {"name": ..., "description": ..., "command": ..., "date": "YYYY-MM-DD",
     "device": "NVIDIA H100 80GB HBM3", "versions": {"torch": ..., "cuda": ..., ...},
     "rows": [{...}, ...], "summary": {...}}

On a CPU the notebook prints the recorded rows, which never change, so nbval can check them.
On a machine with CUDA the same cell also measures live and prints both side by side.
A live number is never invented: without CUDA the cell says that it did not measure.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .env import REPO_ROOT
from .tables import print_table

RESULTS_DIR = REPO_ROOT / "data" / "results"
REQUIRED_FIELDS = ("name", "description", "command", "date", "device", "versions", "rows")


@dataclass(frozen=True)
class Recorded:
    """One recorded result file."""

    name: str
    description: str
    command: str
    date: str
    device: str
    versions: dict[str, str]
    rows: list[dict]
    summary: dict = field(default_factory=dict)

    def header(self) -> str:
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        return f"Recorded on {self.device}, {self.date} ({versions})\n{self.description}"

    def column(self, name: str) -> list:
        """All values of one column, in row order."""
        missing = [i for i, row in enumerate(self.rows) if name not in row]
        if missing:
            raise KeyError(f"Column {name!r} is missing from rows {missing} of result {self.name!r}.")
        return [row[name] for row in self.rows]


def device_info() -> dict:
    """The device and software versions of this machine, for a result file."""
    import torch

    versions = {"torch": torch.__version__}
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
        versions["cuda"] = str(torch.version.cuda)
        try:
            import triton

            versions["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        device = f"CPU {platform.machine()} ({platform.processor() or 'unknown'})"
    for name in ("transformers", "course_lib"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    versions["python"] = platform.python_version()
    return {"device": device, "versions": versions}


def result_path(name: str, directory: Path | None = None) -> Path:
    return (directory or RESULTS_DIR) / f"{name}.json"


def save_result(
    name: str,
    rows: Sequence[dict],
    *,
    description: str,
    command: str,
    summary: dict | None = None,
    directory: Path | None = None,
) -> Path:
    """Write a result file with this machine's device, versions and today's date (UTC)."""
    if not rows:
        raise ValueError(f"Result {name!r} has no rows; nothing to record.")
    record = {
        "name": name,
        "description": description,
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        **device_info(),
        "rows": list(rows),
        "summary": summary or {},
    }
    path = result_path(name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def load_result(name: str | Path, directory: Path | None = None) -> Recorded:
    """Read data/results/<name>.json, with a clear error when it is missing or malformed."""
    path = Path(name) if str(name).endswith(".json") else result_path(str(name), directory)
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.exists() else []
        raise FileNotFoundError(
            f"No recorded result {path.name} in {path.parent}. Record it on a GPU with `make bench`"
            f" (available: {', '.join(available) or 'none'})."
        )
    data = json.loads(path.read_text())
    missing = [key for key in REQUIRED_FIELDS if key not in data]
    if missing:
        raise ValueError(f"{path.name} is not a course result file: it lacks {', '.join(missing)}.")
    return Recorded(**{key: data[key] for key in REQUIRED_FIELDS}, summary=data.get("summary", {}))


def merge_live(
    recorded: Sequence[dict], live: Sequence[dict], key: Sequence[str], values: Sequence[str]
) -> list[dict]:
    """Rows keyed by `key` with each value column twice: '<col> rec' and '<col> live'."""
    live_by_key = {tuple(row[k] for k in key): row for row in live}
    merged = []
    for row in recorded:
        match = live_by_key.get(tuple(row[k] for k in key), {})
        out = {k: row[k] for k in key}
        for col in values:
            out[f"{col} rec"] = row.get(col)
            out[f"{col} live"] = match.get(col)
        merged.append(out)
    return merged


def show_result(
    name: str | Recorded,
    columns: Sequence[str] | None = None,
    *,
    key: Sequence[str] = (),
    live: Callable[[], list[dict]] | None = None,
) -> Recorded:
    """Print a recorded result; with CUDA and a `live` function, measure now and print both.

    columns: the columns to show (default: all of the first row).
    key:     columns that identify a row, to line live rows up with recorded ones.
    live:    a function returning rows with the same columns, measured on this machine's GPU.
    """
    import torch

    rec = name if isinstance(name, Recorded) else load_result(name)
    columns = list(columns or rec.rows[0].keys())
    print(rec.header())
    print_table([{c: row.get(c) for c in columns} for row in rec.rows], columns)
    if live is None:
        return rec
    if not torch.cuda.is_available():
        print("\nNo CUDA device here, so nothing was measured live; the table above is the recording.")
        return rec
    rows = live()
    print(f"\nMeasured live on {torch.cuda.get_device_name(0)} beside the recording:")
    values = [c for c in columns if c not in key]
    print_table(merge_live(rec.rows, rows, key, values) if key else rows)
    return rec
