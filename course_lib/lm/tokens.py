"""Token streams of the corpus splits, and calibration batches for the compression chapters.

A split's documents are tokenized and joined into one stream, each followed by <|endoftext|>.
The training recipe samples windows from the train stream, the perplexity protocol scores the
test or validation stream, and GPTQ/AWQ/SparseGPT calibrate on windows of the calibration stream.
"""

from __future__ import annotations

from functools import lru_cache


def token_stream(split: str, tokenizer):
    """All documents of a corpus split as one 1-D LongTensor, each followed by the eos token."""
    import torch

    return torch.tensor(_stream_ids(split, tokenizer), dtype=torch.long)


@lru_cache(maxsize=16)
def _stream_ids(split: str, tokenizer) -> tuple[int, ...]:
    from .corpus import list_documents

    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token to separate documents with; set tokenizer.eos_token.")
    ids: list[int] = []
    for _, text in list_documents(split):
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return tuple(ids)


def calibration_batches(tokenizer, n_samples: int = 128, seq_len: int = 256, *, seed: int = 0,
                        split: str = "calibration"):
    """`n_samples` random windows of `seq_len` tokens from a split: a LongTensor (n_samples, seq_len).

    The same seed gives the same windows. GPTQ's paper used 128 windows of 2048 tokens of C4; the
    bundled model's context is 512, so the course's default is 128 x 256 from a held-out work.
    """
    import torch

    if n_samples < 1 or seq_len < 1:
        raise ValueError(f"n_samples and seq_len must be positive, got {n_samples} and {seq_len}.")
    stream = token_stream(split, tokenizer)
    if seq_len >= len(stream):
        raise ValueError(f"seq_len {seq_len} is longer than the {split!r} split ({len(stream)} tokens).")
    return random_windows(stream, n_samples, seq_len, torch.Generator().manual_seed(seed))


def random_windows(stream, batch_size: int, seq_len: int, generator):
    """`batch_size` windows of `seq_len` tokens at random offsets of a 1-D token stream.

    Used for calibration batches, the training recipe and the QAT fine-tune; `generator` (a seeded
    torch.Generator) makes the draw reproducible.
    """
    import torch

    if stream.dim() != 1:
        raise ValueError(f"Expected a 1-D token stream, got shape {tuple(stream.shape)}.")
    if len(stream) <= seq_len:
        raise ValueError(f"The token stream ({len(stream)} tokens) must be longer than seq_len ({seq_len}).")
    starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=generator)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


def check_token_ids(calibration):
    """`calibration` as a LongTensor (n_samples, seq_len) of token ids, or a clear error saying what to pass.

    One check for every method that calibrates on token ids (GPTQ, AWQ, SparseGPT, Wanda, structured
    scores, and the library wrappers): a tensor, of an integer dtype, 2-D and not empty.
    """
    import torch

    hint = "build it with course_lib.lm.tokens.calibration_batches(tokenizer, n_samples, seq_len)"
    if not isinstance(calibration, torch.Tensor):
        raise TypeError(f"calibration must be a LongTensor (n_samples, seq_len) of token ids, got "
                        f"{type(calibration).__name__}; {hint}.")
    if calibration.is_floating_point() or calibration.is_complex() or calibration.dtype == torch.bool:
        raise TypeError(f"calibration must hold token ids as torch.long, got {calibration.dtype}; use "
                        f"calibration.long() (token ids, not embeddings or text).")
    if calibration.dim() != 2 or calibration.numel() == 0:
        raise ValueError(f"calibration must be 2-D (n_samples, seq_len) and non-empty, got shape "
                         f"{tuple(calibration.shape)}; stack the samples, or {hint}.")
    return calibration.long()
