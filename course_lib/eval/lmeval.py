"""lm-evaluation-harness from the inside: its requests on a model object, and per-item results.

    lm = harness_lm(model, tok)                          # lm-eval's HFLM around an in-memory model
    lm.loglikelihood(requests("loglikelihood", [(context, continuation), ...]))
    lls, uncond = choice_loglikelihoods(lm, docs)        # what a multiple_choice task asks for, item by item
    stats.mc_accuracies(lls, [d["choices"] for d in docs], [d["label"] for d in docs], uncond)

lm-eval turns every task into three kinds of request: ``loglikelihood`` (context, continuation) -> the
continuation's summed log-probability and whether greedy decoding would produce it; ``loglikelihood_rolling``
(text,) -> the whole text's log-probability in windows; ``generate_until`` (context, settings) -> text. A
multiple-choice item with k choices is k loglikelihood requests (2k with acc_mutual_info: each choice also
without its context), and the metrics are argmaxes over them.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from ..lm.eval_tasks import _max_positions


def harness_lm(model, tokenizer, *, batch_size: int = 16, max_length: int | None = None):
    """lm-eval's HFLM wrapping `model` (no copy, no download); the tokenizer gets a pad token if it lacks one."""
    from lm_eval.models.huggingface import HFLM

    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                max_length=max_length or _max_positions(model), device=str(next(model.parameters()).device))


def requests(kind: str, arguments: Sequence[tuple]) -> list:
    """lm-eval Instances of one request type from their argument tuples."""
    from lm_eval.api.instance import Instance

    kinds = ("loglikelihood", "loglikelihood_rolling", "generate_until")
    if kind not in kinds:
        raise ValueError(f"Unknown request type {kind!r}; lm-eval has {', '.join(kinds)}.")
    return [Instance(request_type=kind, doc={}, arguments=tuple(args), idx=i) for i, args in enumerate(arguments)]


def choice_loglikelihoods(lm, docs: Sequence[dict], *, delimiter: str = "\n", context_key: str = "context",
                          choices_key: str = "choices", unconditional: bool = True):
    """(items, choices) log-likelihoods of every choice after its context, as a multiple_choice task requests
    them (continuation = delimiter + choice), and, with `unconditional`, of each choice after no context
    (lm-eval's acc_mutual_info: context "" and continuation choice... scored after the model's prefix token)."""
    pairs = [(d[context_key], delimiter + c) for d in docs for c in d[choices_key]]
    k = len(docs[0][choices_key])
    if any(len(d[choices_key]) != k for d in docs):
        raise ValueError("Every item needs the same number of choices.")
    lls = torch.tensor([ll for ll, _ in lm.loglikelihood(requests("loglikelihood", pairs))],
                       dtype=torch.float64).reshape(len(docs), k)
    if not unconditional:
        return lls, None
    bare = [("", delimiter + c) for d in docs for c in d[choices_key]]
    uncond = torch.tensor([ll for ll, _ in lm.loglikelihood(requests("loglikelihood", bare))],
                          dtype=torch.float64).reshape(len(docs), k)
    return lls, uncond


def fingerprint(model) -> str:
    """sha256 over the model's parameters and buffers (names, shapes, dtypes, bytes): print it beside every score,
    so that "the same model evaluated twice" cannot pass for "two models that score the same"."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@contextlib.contextmanager
def quiet_harness():
    """lm-eval without its progress bars and notices: its bars ignore TQDM_DISABLE (it passes `disable`
    itself) and would fill a notebook's output; inside the block they go nowhere, and lm-eval's loggers show
    only errors. Results are unchanged."""
    import io
    import logging

    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
