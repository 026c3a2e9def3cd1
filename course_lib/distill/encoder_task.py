"""A classification task for the encoder exercise: which work does this passage come from?

Every work of a chosen set is tokenized and split BY POSITION: its first (1 - test_fraction) of
tokens make training passages, the rest test passages, so a test passage is text the model
never saw (not a shuffled neighbour of a training window). Each part is cut into non-overlapping
windows of `length` tokens, and a CLS token is put in front of each window: BERT's classifier
reads the final hidden state at that first position.

    task = passage_task(tokenizer)             # 6 works, 64-token passages
    task.train_ids.shape                       # (N, 65): CLS + 64 tokens
    task.names[task.train_labels[0]]           # 'Hamlet', ...
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..lm.corpus import list_documents

# Varied on purpose: a tragedy, a comedy, a late romance, a history play, Milton's epic and the Sonnets.
WORKS: tuple[str, ...] = ("Hamlet", "Twelfth Night", "The Tempest", "King Richard III", "Paradise Lost", "Sonnets")


@dataclass
class PassageTask:
    """Passages of `length` tokens (plus CLS) labelled with the index of their work in `names`."""

    train_ids: torch.Tensor  # (N_train, length + 1) int64, column 0 is the CLS id
    train_labels: torch.Tensor  # (N_train,) int64 in [0, len(names))
    test_ids: torch.Tensor  # (N_test, length + 1)
    test_labels: torch.Tensor  # (N_test,)
    names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return len(self.names)

    @property
    def length(self) -> int:
        """Tokens per passage, CLS excluded."""
        return self.train_ids.shape[1] - 1

    def sizes(self) -> dict:
        """The task's size in a few numbers (for tables)."""
        return {"classes": self.n_classes, "length": self.length, "train": len(self.train_labels),
                "test": len(self.test_labels), "chance": 1 / self.n_classes}


@functools.lru_cache(maxsize=1)
def _works() -> dict[str, str]:
    """Title -> text of every work in the corpus, all splits (read once)."""
    return {title: text for split in ("train", "validation", "test", "calibration")
            for title, text in list_documents(split)}


def available_titles() -> tuple[str, ...]:
    """The titles passage_task and work_tokens accept."""
    return tuple(_works())


@functools.lru_cache(maxsize=128)
def work_tokens(tokenizer, title: str) -> tuple[int, ...]:
    """The token ids of one work (cached per tokenizer and title: tokenizing is the slow part)."""
    if title not in _works():
        raise ValueError(f"No work titled {title!r} in the course corpus. Available titles: "
                         f"{', '.join(available_titles())}.")
    return tuple(tokenizer(_works()[title], add_special_tokens=False)["input_ids"])


def _windows(tokens: list[int] | tuple[int, ...], length: int, cls_id: int) -> torch.Tensor:
    """Non-overlapping windows of `length` tokens, a CLS id in front of each: (n, length + 1)."""
    n = len(tokens) // length
    body = torch.tensor(tokens[: n * length], dtype=torch.long).view(n, length)
    return torch.cat([torch.full((n, 1), cls_id, dtype=torch.long), body], dim=1)


def _balanced(per_class: list[torch.Tensor], cap: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`cap` random windows of every class, all classes shuffled together: (ids, labels)."""
    ids, labels = [], []
    for label, windows in enumerate(per_class):
        keep = torch.randperm(len(windows), generator=gen)[:cap]
        ids.append(windows[keep.sort().values])
        labels.append(torch.full((cap,), label, dtype=torch.long))
    ids_all, labels_all = torch.cat(ids), torch.cat(labels)
    order = torch.randperm(len(labels_all), generator=gen)
    return ids_all[order], labels_all[order]


def passage_task(tokenizer, works: tuple[str, ...] | list[str] = WORKS, length: int = 64,
                 test_fraction: float = 0.15, max_per_class: int | None = None, seed: int = 0) -> PassageTask:
    """Balanced "which work is this passage from?" task; see the module docstring.

    Every class gets as many passages as the smallest class has (or max_per_class, if smaller),
    in the train and the test split alike, so chance accuracy is 1 / len(works).
    """
    works = tuple(works)
    titles = available_titles()
    unknown = [w for w in works if w not in titles]
    if unknown:
        raise ValueError(f"Unknown title(s) {unknown}. Available titles: {', '.join(titles)}.")
    if len(set(works)) < 2:
        raise ValueError(f"A classification task needs at least 2 different works, got {list(works)}.")
    if len(set(works)) != len(works):
        raise ValueError(f"Each work may appear only once, got {list(works)}.")
    if length < 1:
        raise ValueError(f"length (tokens per passage) must be >= 1, got {length}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}.")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}.")
    cls_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
    train_parts, test_parts = [], []
    for title in works:
        tokens = work_tokens(tokenizer, title)
        cut = int(len(tokens) * (1 - test_fraction))  # split by position: the test part is unseen text
        train_w, test_w = _windows(tokens[:cut], length, cls_id), _windows(tokens[cut:], length, cls_id)
        if len(train_w) == 0 or len(test_w) == 0:
            raise ValueError(f"{title!r} has {len(tokens)} tokens: too few to fill one {length}-token passage in both "
                             f"its train ({cut}) and test ({len(tokens) - cut}) parts. Use a smaller length or "
                             "test_fraction closer to 0.5, or pick longer works.")
        train_parts.append(train_w)
        test_parts.append(test_w)
    gen = torch.Generator().manual_seed(seed)
    cap = min(len(w) for w in train_parts)
    test_cap = min(len(w) for w in test_parts)
    if max_per_class is not None:
        cap, test_cap = min(cap, max_per_class), min(test_cap, max_per_class)
    train_ids, train_labels = _balanced(train_parts, cap, gen)
    test_ids, test_labels = _balanced(test_parts, test_cap, gen)
    return PassageTask(train_ids, train_labels, test_ids, test_labels, works)
