"""Train the byte-level BPE tokenizer of the course model on the train split of the corpus.

    python -m course_lib.pipeline.tokenizer_train --out data/course-model [--vocab-size 4096]

Writes ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` so that
``transformers.AutoTokenizer.from_pretrained(out)`` loads it as a fast tokenizer, then checks the
result: exact round trip on the validation split, and tokens per split.

Design (GPT-2 style, small):

* byte-level: every string can be encoded, nothing is ever unknown, ``decode(encode(s)) == s``;
* one special token, ``<|endoftext|>``, used as bos, eos and pad; the tokenizer adds no special
  tokens by itself; put ``<|endoftext|>`` between documents when you build training sequences;
* vocabulary size a multiple of 128 (embedding tables stay GPU-friendly).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from course_lib.lm.corpus import DATA_DIR, SPLITS, list_documents

MODEL_DIR = DATA_DIR / "course-model"
DEFAULT_VOCAB_SIZE = 4096
EOS_TOKEN = "<|endoftext|>"
MIN_FREQUENCY = 2


def check_vocab_size(vocab_size: int) -> int:
    """Return ``vocab_size`` if it is a multiple of 128 with room for merges, else raise ValueError."""
    if not isinstance(vocab_size, int) or vocab_size % 128 != 0 or vocab_size < 384:
        raise ValueError(
            f"vocab size must be a multiple of 128 and at least 384 (256 bytes + special token + "
            f"merges), got {vocab_size!r}; try 4096"
        )
    return vocab_size


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE with exactly ``vocab_size`` entries (special token included)."""
    check_vocab_size(vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        special_tokens=[EOS_TOKEN],  # id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"training produced {tokenizer.get_vocab_size()} entries instead of {vocab_size}: "
            "the corpus has too few distinct pairs for this size"
        )
    return tokenizer


def tokenizer_config() -> dict:
    """What transformers reads next to tokenizer.json."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,  # byte-level: nothing is unknown
        "add_bos_token": False,
        "add_eos_token": False,
        # transformers would otherwise "clean up" spaces before punctuation on decode,
        # which breaks decode(encode(text)) == text.
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }


def save_tokenizer(tokenizer: Tokenizer, out: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"), pretty=True)
    config = tokenizer_config()
    special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token")}
    for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (out / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def check_tokenizer(out: Path, corpus_dir: Path | None = None) -> dict[str, dict[str, float]]:
    """Load ``out`` with AutoTokenizer, check the round trip on validation, count tokens per split."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    if not tok.is_fast:
        raise RuntimeError(f"{out} did not load as a fast tokenizer")
    if tok.eos_token != EOS_TOKEN or len(tok) % 128 != 0:
        raise RuntimeError(f"unexpected tokenizer: eos={tok.eos_token!r}, size={len(tok)}")
    stats = {}
    for split in SPLITS:
        texts = [text for _, text in list_documents(split, corpus_dir)]
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        if split == "validation":
            for text, seq in zip(texts, ids):
                if tok.decode(seq) != text:
                    raise RuntimeError("decode(encode(text)) != text on the validation split")
        n_chars = sum(len(t) for t in texts)
        n_tokens = sum(len(seq) for seq in ids)
        stats[split] = {"documents": len(texts), "characters": n_chars, "tokens": n_tokens,
                        "chars_per_token": round(n_chars / n_tokens, 3)}
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.pipeline.tokenizer_train", description="Train the course tokenizer."
    )
    parser.add_argument("--out", type=Path, default=MODEL_DIR, help="output folder (default data/course-model)")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="a multiple of 128 (default 4096)")
    parser.add_argument("--corpus-dir", type=Path, help="corpus folder (default data/corpus)")
    args = parser.parse_args(argv)
    try:
        check_vocab_size(args.vocab_size)
    except ValueError as err:
        parser.error(str(err))

    train_texts = [text for _, text in list_documents("train", args.corpus_dir)]
    tokenizer = train_tokenizer(train_texts, args.vocab_size)
    save_tokenizer(tokenizer, args.out)
    print(f"wrote {args.out}: vocab {tokenizer.get_vocab_size()}, trained on {len(train_texts)} train documents")
    for split, st in check_tokenizer(args.out, args.corpus_dir).items():
        print(f"{split:11s} {st['documents']:3d} docs {st['characters']:>9,d} chars "
              f"{st['tokens']:>9,d} tokens {st['chars_per_token']:.2f} chars/token")
    print("round trip on validation: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
