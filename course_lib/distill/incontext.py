"""In-context (context) distillation: the student learns, without the prefix, what the teacher does with it.

The teacher reads a prefix (the seed's few-shot prompt; here two passages of a play the course
model never trained on) before each window of that play; the student reads the window alone and is
trained to match the teacher's next-token distributions there: KL(p_teacher(. | prefix, x) ||
p_student(. | x)) at every position. No labels are used, only the teacher's own predictions.

The seed's version passes ``labels=teacher_output`` with the query as input; the two have different
lengths (the teacher's output contains the few-shot prompt too), which transformers rejects. Here the
student's input is the window and the targets are the teacher's distributions at the same tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..core.env import seed_everything
from ..lm.blocks import block_progress
from ..lm.recipe import autocast, warmup_cosine
from .encoder_task import work_tokens
from .loss import soft_kl


@dataclass
class ContextTask:
    title: str
    prefix: torch.Tensor  # (P,) the passages the teacher reads first
    other_prefix: torch.Tensor  # (P,) the same length from a different work: the control
    train: torch.Tensor  # (n, L) windows from the first part of the work
    test: torch.Tensor  # (m, L) windows from its held-out end


def context_task(tokenizer, title: str = "The Merchant of Venice", other: str = "Paradise Lost", *,
                 prefix_tokens: int = 128, window: int = 64, n_train: int = 64, n_test: int = 32,
                 test_fraction: float = 0.2) -> ContextTask:
    """Windows of `title` (train from its first part, test from its last `test_fraction`) and prefixes.

    The prefix is `prefix_tokens` tokens from the middle of the work's train part (the start is a title
    page and a cast list); the training windows are the rest of the train part, so none overlaps it.
    """
    ids = torch.tensor(work_tokens(tokenizer, title))
    cut = int(len(ids) * (1 - test_fraction))
    head, tail = ids[:cut], ids[cut:]
    need_train, need_test = prefix_tokens + n_train * window, n_test * window
    if len(head) < need_train or len(tail) < need_test:
        raise ValueError(f"{title!r} has {len(ids)} tokens, too few for {n_train} + {n_test} windows of {window} "
                         f"and a {prefix_tokens}-token prefix; ask for fewer or shorter windows.")
    mid = len(head) // 2  # the prefix: dialogue from the middle of the train part, not the title page
    prefix = head[mid : mid + prefix_tokens]
    rest = torch.cat([head[mid + prefix_tokens :], head[:mid]])
    train = rest[: n_train * window].view(n_train, window)
    test = tail[:need_test].view(n_test, window)
    other_ids = torch.tensor(work_tokens(tokenizer, other))
    other_mid = len(other_ids) // 2
    return ContextTask(title, prefix, other_ids[other_mid : other_mid + prefix_tokens], train, test)


@torch.no_grad()
def context_logits(model, windows: torch.Tensor, prefix: torch.Tensor | None, batch_size: int = 32) -> torch.Tensor:
    """The model's logits at the window's positions, with `prefix` (or nothing) read first: (n, L, V)."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, windows.shape[0], batch_size):
        x = windows[i : i + batch_size]
        if prefix is not None:
            x = torch.cat([prefix.expand(x.shape[0], -1), x], dim=1)
        with autocast(device):
            logits = model(input_ids=x.to(device)).logits.float()
        out.append(logits[:, -windows.shape[1] :].cpu())
    return torch.cat(out)


def window_scores(logits: torch.Tensor, windows: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> dict:
    """CE of the windows' next tokens (nats/token) and, given targets, KL(targets || logits); last position dropped."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    ce = -logp.gather(-1, windows[:, 1:, None]).mean().item()
    out = {"ce": ce}
    if teacher_logits is not None:
        out["kl"] = soft_kl(logits[:, :-1], teacher_logits[:, :-1]).item()
    return out


def distil_context(student, teacher_logits: torch.Tensor, windows: torch.Tensor, *, steps: int = 60,
                   batch_size: int = 8, lr: float = 1e-4, seed: int = 0, progress: bool = True) -> list[float]:
    """Train `student` on the bare windows to match the teacher's (prefixed) logits; returns the losses."""
    if teacher_logits.shape[:2] != windows.shape:
        raise ValueError(f"teacher_logits {tuple(teacher_logits.shape)} must cover the windows {tuple(windows.shape)}.")
    device = next(student.parameters()).device
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    student.train()
    losses = []
    for step in block_progress(range(steps), "context distillation", progress):
        rows = torch.randint(0, windows.shape[0], (batch_size,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, lr, max(1, steps // 10), steps, 0.1)
        with autocast(device):
            logits = student(input_ids=windows[rows].to(device)).logits
        loss = soft_kl(logits[:, :-1], teacher_logits[rows, :-1].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    student.eval()
    return losses


def context_experiment(teacher, tokenizer, *, steps: int = 60, batch_size: int = 8, lr: float = 1e-4,
                       seed: int = 0, progress: bool = True, **task_kwargs) -> dict:
    """Teacher with/without the prefix, the control prefix, and a teacher copy distilled to work without it.

    Returns rows of held-out CE and KL to the prefixed teacher, plus the student's loss curve.
    """
    import copy

    task = context_task(tokenizer, **task_kwargs)
    t0 = time.perf_counter()
    prefixed_train = context_logits(teacher, task.train, task.prefix)
    prefixed_test = context_logits(teacher, task.test, task.prefix)
    rows = {
        "teacher, with the prefix": window_scores(prefixed_test, task.test, prefixed_test),
        "teacher, no prefix": window_scores(context_logits(teacher, task.test, None), task.test, prefixed_test),
        "teacher, another work's prefix": window_scores(context_logits(teacher, task.test, task.other_prefix),
                                                        task.test, prefixed_test),
    }
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    losses = distil_context(student, prefixed_train, task.train, steps=steps, batch_size=batch_size, lr=lr,
                            seed=seed, progress=progress)
    rows["student, no prefix"] = window_scores(context_logits(student, task.test, None), task.test, prefixed_test)
    return {"task": task, "rows": rows, "losses": losses, "student": student, "seconds": time.perf_counter() - t0}
