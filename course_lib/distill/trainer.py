"""Training a student: from the labels alone, or from a teacher's logits.

One loop serves the chapter's three white-box runs:

* CE only: the student learns the next token of the corpus (hard labels), as the teacher did;
* logit KD: the same windows, scored with ``distillation_loss`` against the teacher's logits;
* sequence-level KD: CE again, but on text the teacher generated (``sequence.TeacherSamples``).

The recipe is the course model's (``course_lib.pipeline.train``): AdamW (0.9, 0.95), linear warm-up then
cosine decay, gradient clipping, bf16 autocast on CUDA. Evaluation every ``eval_every`` steps scores
the student on fixed validation windows: cross-entropy against the text, and KL(teacher || student)
against the teacher's distributions, which are computed once and kept (``EvalSet``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from ..core.env import seed_everything
from ..lm.blocks import block_progress
from ..lm.tokens import random_windows
from ..lm.recipe import adamw, autocast, warmup_cosine
from .loss import IGNORE_INDEX, distillation_loss, next_token_labels
from .student import param_count

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids, labels aligned with the logits)


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 2e-3
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    temperature: float = 2.0  # KD only
    alpha: float = 0.5  # KD only: weight of the hard-label CE term
    eval_every: int = 50
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"DistillConfig.{name} must be at least 1, got {getattr(self, name)}.")
        if self.lr <= 0 or self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise ValueError("DistillConfig needs lr > 0, temperature > 0 and 0 <= alpha <= 1.")

    @property
    def tokens(self) -> int:
        """The token budget: steps x batch x sequence length."""
        return self.steps * self.batch_size * self.seq_len


class CorpusWindows:
    """Random windows of a token stream, labelled with their next tokens (the corpus's hard labels)."""

    def __init__(self, stream: torch.Tensor, batch_size: int, seq_len: int):
        if len(stream) < seq_len + 2:
            raise ValueError(f"The stream ({len(stream)} tokens) is shorter than one window of {seq_len}.")
        self.stream, self.batch_size, self.seq_len = stream, batch_size, seq_len

    def __call__(self, gen: torch.Generator) -> Batch:
        ids = random_windows(self.stream[:-1], self.batch_size, self.seq_len, gen)
        return ids, next_token_labels(ids)


@dataclass
class EvalSet:
    """Fixed validation windows and the teacher's log-probabilities on them (computed once)."""

    ids: torch.Tensor  # (n, seq_len)
    teacher_logp: torch.Tensor | None  # (n, seq_len, V) float16, or None without a teacher

    @property
    def tokens(self) -> int:
        return self.ids.numel()


@torch.no_grad()
def make_eval_set(stream: torch.Tensor, seq_len: int, max_tokens: int, teacher=None, batch_size: int = 16) -> EvalSet:
    """The first max_tokens // seq_len non-overlapping windows of `stream`, with the teacher's log-probs."""
    n = min((len(stream) - 1) // seq_len, max(1, max_tokens // seq_len))
    if n < 1:
        raise ValueError(f"The evaluation stream ({len(stream)} tokens) is shorter than one window of {seq_len}.")
    ids = stream[: n * seq_len].view(n, seq_len)
    if teacher is None:
        return EvalSet(ids, None)
    device = next(teacher.parameters()).device
    teacher.eval()
    chunks = []
    with autocast(device):
        for i in range(0, n, batch_size):
            logits = teacher(input_ids=ids[i : i + batch_size].to(device)).logits.float()
            chunks.append(torch.log_softmax(logits, -1).half())
    return EvalSet(ids, torch.cat(chunks))


@torch.no_grad()
def evaluate(student, evalset: EvalSet, batch_size: int = 16) -> dict[str, float]:
    """Validation CE (nats/token, next-token) and, with a teacher, KL(teacher || student) at T = 1."""
    device = next(student.parameters()).device
    was_training = student.training
    student.eval()
    ce_sum = kl_sum = 0.0
    n_ce = n_kl = 0
    with autocast(device):
        for i in range(0, evalset.ids.shape[0], batch_size):
            ids = evalset.ids[i : i + batch_size].to(device)
            logp = torch.log_softmax(student(input_ids=ids).logits.float(), -1)
            ce_sum += -logp[:, :-1].gather(-1, ids[:, 1:, None]).sum().item()
            n_ce += ids[:, 1:].numel()
            if evalset.teacher_logp is not None:
                t = evalset.teacher_logp[i : i + batch_size].to(device).float()
                kl_sum += (t.exp() * (t - logp)).sum().item()
                n_kl += ids.numel()
    student.train(was_training)
    out = {"val_loss": ce_sum / n_ce, "val_ppl": math.exp(ce_sum / n_ce)}
    if n_kl:
        out["val_kl"] = kl_sum / n_kl
    return out


@dataclass
class DistillRun:
    name: str
    config: dict
    params: int
    seconds: float
    log: list[dict] = field(default_factory=list)
    best_state: dict | None = None  # the weights at the lowest validation loss (train_student(keep_best=True))

    @property
    def final(self) -> dict:
        return self.log[-1]

    @property
    def best(self) -> dict:
        """The evaluation row with the lowest validation loss (the best checkpoint)."""
        return min((r for r in self.log if "val_loss" in r), key=lambda r: r["val_loss"])


def train_student(student, source: Callable[[torch.Generator], Batch], cfg: DistillConfig, *, teacher=None,
                  evalset: EvalSet | None = None, name: str = "student", progress: bool = True,
                  keep_best: bool = False) -> DistillRun:
    """Train `student` for cfg.steps steps on batches from `source`; returns the evaluation log.

    teacher: None trains on the labels alone (CE); a model makes every step a distillation step:
      alpha * CE + (1 - alpha) * T^2 * KL(teacher || student), the teacher frozen in eval mode.
    source(generator) -> (input_ids, labels): labels aligned with the logits, IGNORE_INDEX where
      nothing is scored (a prompt). The same seed gives the same batches, the same initial state
      (seeded here) and so the same run.
    keep_best: keep a copy of the weights at the evaluation with the lowest validation loss in
      ``run.best_state`` (needs an evalset), to score the best checkpoint afterwards.
    """
    if keep_best and evalset is None:
        raise ValueError("keep_best needs an evalset: the best checkpoint is the one with the lowest validation loss.")
    device = next(student.parameters()).device
    if teacher is not None:
        t_vocab, s_vocab = teacher.config.vocab_size, student.config.vocab_size
        if t_vocab != s_vocab:
            raise ValueError(f"The student's vocabulary ({s_vocab}) differs from the teacher's ({t_vocab}); "
                             "logit distillation needs a shared tokenizer (or distil black-box, from text).")
        teacher.eval()  # frozen: its forward runs under no_grad below
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = adamw(student.parameters(), cfg.lr, cfg.weight_decay, fused=device.type == "cuda")
    run = DistillRun(name=name, config=asdict(cfg), params=param_count(student), seconds=0.0)
    start, count = time.perf_counter(), 0
    running = torch.zeros((), device=device)  # summed on the device: no host sync per step

    def record(step: int) -> None:
        row = {"step": step, "tokens": step * cfg.batch_size * cfg.seq_len,
               "train_loss": running.item() / count if count else None, "seconds": time.perf_counter() - start}
        if evalset is not None:
            row.update(evaluate(student, evalset))
            if keep_best and (run.best_state is None or row["val_loss"] < run.best["val_loss"]):
                run.best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        run.log.append(row)

    student.train()
    bar = block_progress(range(cfg.steps), desc=name, progress=progress)
    for step in bar:
        if step % cfg.eval_every == 0:
            record(step)
            running, count = torch.zeros((), device=device), 0
        ids, labels = source(gen)
        ids, labels = ids.to(device), labels.to(device)
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
        with autocast(device):
            logits = student(input_ids=ids).logits
            if teacher is None:
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                                         ignore_index=IGNORE_INDEX)
            else:
                with torch.no_grad():
                    teacher_logits = teacher(input_ids=ids).logits
                loss = distillation_loss(logits, teacher_logits, labels, temperature=cfg.temperature,
                                         alpha=cfg.alpha).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt.step()
        running, count = running + loss.detach().float(), count + 1
        if step % 10 == 0 and not getattr(bar, "disable", True):
            bar.set_postfix(loss=f"{loss.item():.3f}")
    record(cfg.steps)
    run.seconds = time.perf_counter() - start
    return run
