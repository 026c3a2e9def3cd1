"""Sequence-level and black-box distillation: the student learns from text the teacher wrote.

Kim & Rush (2016) replace the corpus by the teacher's outputs: the student is trained with plain
cross-entropy on sequences the teacher generated. Nothing but text crosses from teacher to student,
so the same recipe is "black-box" distillation (DeepSeek-R1-Distill: supervised fine-tuning on the
teacher's answers). The seed decodes greedily; ``sample_from_teacher`` also samples at a
temperature, which keeps the diversity a greedy decoder loses (``repeated_ngrams`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lm.blocks import block_progress
from ..lm.tokens import random_windows
from ..lm.recipe import autocast
from .loss import IGNORE_INDEX


@torch.no_grad()
def sample_from_teacher(teacher, prompts: torch.Tensor, new_tokens: int, *, temperature: float = 1.0,
                        greedy: bool = False, seed: int = 0, batch_size: int = 64,
                        progress: bool = False) -> torch.Tensor:
    """Continue each prompt (rows of equal length) by `new_tokens` tokens; returns (n, prompt + new).

    Sampling draws from softmax(logits / temperature) with a seeded generator (on the teacher's
    device), so the same seed gives the same text; greedy=True takes the argmax (the seed's choice).
    The end-of-text token is an ordinary token here, as it is in the training stream.
    """
    if prompts.dim() != 2:
        raise ValueError(f"prompts must be (n, prompt_len), got shape {tuple(prompts.shape)}.")
    if new_tokens < 1 or temperature <= 0:
        raise ValueError("new_tokens must be >= 1 and temperature > 0.")
    limit = getattr(teacher.config, "max_position_embeddings", None)
    if limit is not None and prompts.shape[1] + new_tokens > limit:
        raise ValueError(f"prompt ({prompts.shape[1]}) + {new_tokens} new tokens exceeds the teacher's {limit} positions.")
    device = next(teacher.parameters()).device
    teacher.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in block_progress(range(0, prompts.shape[0], batch_size), "teacher samples", progress):
        tokens = prompts[i : i + batch_size].to(device)
        step_input, cache = tokens, None
        for _ in range(new_tokens):
            with autocast(device):
                res = teacher(input_ids=step_input, past_key_values=cache, use_cache=True)
            logits, cache = res.logits[:, -1].float(), res.past_key_values
            if greedy:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)
            tokens = torch.cat([tokens, nxt], dim=1)
            step_input = nxt  # (B, 1): the cache holds everything before
        out.append(tokens.cpu())
    return torch.cat(out)


@dataclass
class TeacherSamples:
    """A corpus of teacher-written sequences; batches score only the generated tokens (not the prompts)."""

    sequences: torch.Tensor  # (n, prompt_len + new)
    prompt_len: int
    batch_size: int

    def __post_init__(self):
        if not 0 <= self.prompt_len < self.sequences.shape[1] - 1:
            raise ValueError(f"prompt_len {self.prompt_len} leaves nothing generated to train on.")

    @property
    def seq_len(self) -> int:
        return self.sequences.shape[1]

    def __call__(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, self.sequences.shape[0], (self.batch_size,), generator=gen)
        ids = self.sequences[rows]
        labels = torch.full_like(ids, IGNORE_INDEX)
        start = max(self.prompt_len - 1, 0)  # position prompt_len - 1 predicts the first generated token
        labels[:, start:-1] = ids[:, start + 1 :]
        return ids, labels


def teacher_corpus(teacher, stream: torch.Tensor, n_sequences: int, seq_len: int, prompt_len: int, *,
                   temperature: float = 1.0, greedy: bool = False, seed: int = 0, batch_size: int = 64,
                   progress: bool = False) -> torch.Tensor:
    """`n_sequences` teacher continuations of random `prompt_len`-token windows of `stream`, each seq_len long."""
    gen = torch.Generator().manual_seed(seed)
    prompts = random_windows(stream[:-1], n_sequences, prompt_len, gen)
    return sample_from_teacher(teacher, prompts, seq_len - prompt_len, temperature=temperature, greedy=greedy,
                               seed=seed, batch_size=batch_size, progress=progress)


def repeated_ngrams(sequences: torch.Tensor, n: int = 4, start: int = 0) -> float:
    """Fraction of the n-grams (from column `start` on) that already occurred earlier in the same row."""
    repeated = total = 0
    for row in sequences[:, start:].tolist():
        seen = set()
        for i in range(len(row) - n + 1):
            gram = tuple(row[i : i + n])
            repeated += gram in seen
            total += 1
            seen.add(gram)
    return repeated / max(total, 1)
