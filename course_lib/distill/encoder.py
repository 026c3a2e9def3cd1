"""Distilling an encoder: a small BERT teacher and its half-depth students (the DistilBERT recipe).

DistilBERT (Sanh et al., 2019) halves BERT's depth, initialises the student from the teacher by
taking one layer out of two, and trains it with a distillation loss. Here the same three moves
are made on a toy scale, on the "which work is this passage from?" task of `encoder_task`:

    task = passage_task(tokenizer)
    teacher = new_encoder(EncoderSpec(), len(tokenizer), task.n_classes, task.train_ids.shape[1])
    train_classifier(teacher, task, steps=300)
    student = half_depth_student(teacher, init="teacher")          # layer i <- teacher layer 2i
    train_classifier(student, task, steps=200, teacher=teacher)      # alpha * CE + (1 - alpha) * T^2 * KL

`run_encoder_experiment` runs the whole comparison (teacher, then three students on equal steps).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..lm.blocks import block_progress
from ..lm.recipe import adamw, autocast, warmup_cosine
from .encoder_task import WORKS, PassageTask, available_titles, passage_task
from .loss import distillation_loss
from .student import param_count  # embeddings included, as the DistilBERT paper counts them

__all__ = ["WORKS", "PassageTask", "available_titles", "passage_task", "EncoderSpec", "new_encoder",
           "param_count", "layer_param_count", "half_depth_student", "ClassifierRun", "train_classifier",
           "accuracy", "time_models", "DISTILBERT_PUBLISHED", "ENCODER_PROFILES", "run_encoder_experiment"]


@dataclass(frozen=True)
class EncoderSpec:
    """BERT dimensions (a toy: BERT-base is hidden 768, 12 layers, 12 heads, intermediate 3072)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 2
    intermediate: int = 512
    dropout: float = 0.1
    init_std: float = 0.02  # std of the normal init of every weight matrix (BERT's initializer_range)


def new_encoder(spec: EncoderSpec, vocab_size: int, n_classes: int, max_positions: int, seed: int = 0):
    """A randomly initialised transformers BertForSequenceClassification (bidirectional attention).

    max_positions: the longest input, CLS included. The global torch RNG is left untouched.
    """
    from transformers import BertConfig, BertForSequenceClassification

    if spec.hidden % spec.heads:
        raise ValueError(f"hidden ({spec.hidden}) must divide by heads ({spec.heads}).")
    if n_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got {n_classes}.")
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
        hidden_dropout_prob=spec.dropout, attention_probs_dropout_prob=spec.dropout,
        max_position_embeddings=max_positions, type_vocab_size=1, num_labels=n_classes,
        initializer_range=spec.init_std,
        pad_token_id=None,  # no padding here; the CLS id (0) must keep a trainable embedding
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertForSequenceClassification(config)


def layer_param_count(model) -> int:
    """Parameters of the transformer layers alone: the part that halving the depth halves."""
    return param_count(model.bert.encoder)


def _layer_map(teacher_layers: int) -> dict[int, int]:
    """Student layer i <- teacher layer 2i ("one layer out of two")."""
    return {i: 2 * i for i in range(teacher_layers // 2)}


def half_depth_student(teacher, init: str = "teacher", seed: int = 0):
    """A student with the teacher's config but half its layers.

    init="teacher": embeddings, pooler and classifier copied from the teacher, and student layer i
      from teacher layer 2i (DistilBERT's initialisation). init="random": a fresh random init (seeded).
    """
    from transformers import BertForSequenceClassification

    layers = teacher.config.num_hidden_layers
    if layers < 2 or layers % 2:
        raise ValueError(f"half_depth_student needs an even number of teacher layers (>= 2), got {layers}.")
    if init not in ("teacher", "random"):
        raise ValueError(f"init must be 'teacher' or 'random', got {init!r}.")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers // 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = BertForSequenceClassification(config)
    ref = next(teacher.parameters())
    student.to(device=ref.device, dtype=ref.dtype)
    if init == "teacher":
        source = teacher.state_dict()
        prefix = "bert.encoder.layer."
        state = {}
        for name in student.state_dict():
            if name.startswith(prefix):  # bert.encoder.layer.{i}.rest -> bert.encoder.layer.{2i}.rest
                i, rest = name[len(prefix):].split(".", 1)
                state[name] = source[f"{prefix}{_layer_map(layers)[int(i)]}.{rest}"]
            else:
                state[name] = source[name]
        student.load_state_dict(state)
    return student


# ---------------------------------------------------------------------------------------------
# Training, evaluation and timing
# ---------------------------------------------------------------------------------------------


@dataclass
class ClassifierRun:
    """One training run: the log ({step, train_loss, test_acc} rows), the final test accuracy, the time."""

    log: list[dict] = field(default_factory=list)
    test_acc: float = 0.0
    seconds: float = 0.0


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


def accuracy(model, ids: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of passages whose arg-max class is the label (eval mode, no gradients)."""
    device, was_training = _device(model), model.training
    model.eval()
    correct = 0
    with torch.no_grad(), autocast(device):
        for i in range(0, len(ids), batch_size):
            pred = _logits(model, ids[i: i + batch_size].to(device)).argmax(-1)
            correct += int((pred == labels[i: i + batch_size].to(device)).sum())
    model.train(was_training)
    return correct / len(ids)


def _batch_indices(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """`steps` batches of indices in 0..n-1: successive shuffled epochs, each passage once per epoch."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        batch, order = order[:batch_size], order[batch_size:]
        yield batch


def train_classifier(model, task: PassageTask, *, steps: int, batch_size: int = 32, lr: float = 1e-3,
                     teacher=None, temperature: float = 2.0, alpha: float = 0.5, seed: int = 0,
                     eval_every: int = 0, progress: bool = True, device=None) -> ClassifierRun:
    """Train `model` on the task's passages (in place); deterministic on CPU for a given seed.

    Without a teacher the loss is cross-entropy; with one it is distillation_loss:
    alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T).
    AdamW, linear warm-up over 10% of the steps, then cosine decay to lr / 10.
    eval_every > 0 logs test accuracy every that many steps; the last step is always logged.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}.")
    if device is not None:
        model.to(device)
    device = _device(model)
    if teacher is not None:
        if teacher.config.num_labels != model.config.num_labels:
            raise ValueError(f"The teacher scores {teacher.config.num_labels} classes, the student "
                             f"{model.config.num_labels}: they must classify the same task.")
        teacher.eval()
    torch.manual_seed(seed)  # dropout masks
    gen = torch.Generator().manual_seed(seed)  # batch order
    opt = adamw(model.parameters(), lr, 0.01, betas=(0.9, 0.999))  # BERT's AdamW settings
    warmup = max(1, steps // 10)
    run = ClassifierRun()
    running, count = torch.zeros((), device=device), 0  # train loss summed since the last log row
    start = time.perf_counter()
    model.train()
    batches = _batch_indices(len(task.train_labels), batch_size, steps, gen)
    for step, idx in enumerate(block_progress(batches, "train", progress), start=1):
        ids, labels = task.train_ids[idx].to(device), task.train_labels[idx].to(device)
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step - 1, lr, warmup, steps, 0.1)
        with autocast(device):
            logits = _logits(model, ids)
        if teacher is None:
            loss = F.cross_entropy(logits.float(), labels)
        else:
            with torch.no_grad(), autocast(_device(teacher)):
                teacher_logits = _logits(teacher, ids.to(_device(teacher))).to(device)
            loss = distillation_loss(logits, teacher_logits, labels, temperature=temperature, alpha=alpha).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running, count = running + loss.detach().float(), count + 1  # no .item(): no GPU sync per step
        if step == steps or (eval_every and step % eval_every == 0):
            run.log.append({"step": step, "train_loss": (running / count).item(),
                            "test_acc": accuracy(model, task.test_ids, task.test_labels)})
            running, count = torch.zeros((), device=device), 0
    run.test_acc = run.log[-1]["test_acc"]
    run.seconds = time.perf_counter() - start
    return run


def time_models(models: dict, ids: torch.Tensor, batch_size: int = 64, repeats: int = 5) -> dict[str, float]:
    """Passages per second of each model's forward pass over `ids`: best of `repeats` interleaved rounds
    (course_lib.core.timing.best_of_interleaved), after one untimed warm-up pass per model."""
    from ..core.timing import best_of_interleaved

    if not models or repeats < 1:
        raise ValueError("time_models needs at least one model and repeats >= 1.")

    def one_pass(model):
        device = _device(model)
        with torch.no_grad(), autocast(device):
            for i in range(0, len(ids), batch_size):
                _logits(model, ids[i: i + batch_size].to(device))

    modes = {name: m.training for name, m in models.items()}
    for model in models.values():
        model.eval()
    device = _device(next(iter(models.values())))
    best = best_of_interleaved({name: (lambda m=m: one_pass(m)) for name, m in models.items()}, repeats=repeats,
                               device=device)
    for name, model in models.items():
        model.train(modes[name])
    return {name: len(ids) / seconds for name, seconds in best.items()}


# ---------------------------------------------------------------------------------------------
# The published numbers and the experiment
# ---------------------------------------------------------------------------------------------

# Sanh, Debut, Chaumond, Wolf (2019), "DistilBERT, a distilled version of BERT: smaller, faster,
# cheaper and lighter", arXiv:1910.01108. Table 1: GLUE dev macro-score; Table 2: IMDb test
# accuracy; Table 3: parameters and inference time of a full pass over STS-B on CPU, batch size 1.
DISTILBERT_PUBLISHED: list[dict] = [
    {"model": "BERT-base", "layers": 12, "params_M": 110, "glue_dev": 79.5, "imdb_acc": 93.46, "stsb_cpu_s": 668},
    {"model": "DistilBERT", "layers": 6, "params_M": 66, "glue_dev": 77.0, "imdb_acc": 92.82, "stsb_cpu_s": 410},
]


# Workloads for run_encoder_experiment(tok, **env.profile.pick(small=..., large=...)).
# small: about 30 s on one CPU thread. A 32-wide model learns this task as well as a 128-wide one in
# that budget; BERT's init (std 0.02) and dropout slow its start, so the small profile drops dropout
# and starts from a wider init. large: BERT's own defaults (EncoderSpec()) and many more steps.
ENCODER_PROFILES: dict[str, dict] = {
    "small": dict(spec=EncoderSpec(hidden=32, intermediate=128, dropout=0.0, init_std=0.1), lr=3e-3,
                  teacher_steps=500, student_steps=100, batch_size=32, length=64),
    "large": dict(spec=EncoderSpec(), lr=1e-3, teacher_steps=3000, student_steps=1000, batch_size=32, length=64),
}


def run_encoder_experiment(tokenizer, *, teacher_steps: int, student_steps: int, batch_size: int = 32,
                           length: int = 64, device=None, seed: int = 0, progress: bool = True,
                           spec: EncoderSpec | None = None, lr: float = 2e-3, works: tuple[str, ...] = WORKS,
                           temperature: float = 2.0, alpha: float = 0.5, timing_passages: int = 256,
                           timing_repeats: int = 3) -> dict:
    """Teacher (CE), then three half-depth students trained for the same steps:
    random init + CE, teacher init + CE, teacher init + KD.

    Returns {"rows": [{name, layers, params, layer_params, test_acc, passages_per_s}], "task": task.sizes(),
    "runs": {name: ClassifierRun}, "models": {name: model}, "seconds": total}.
    """
    from ..core.env import choose_device

    device = device if isinstance(device, torch.device) else choose_device(device)
    spec = spec or EncoderSpec()
    start = time.perf_counter()
    task = passage_task(tokenizer, works, length=length, seed=seed)
    common = dict(batch_size=batch_size, lr=lr, seed=seed, progress=progress)

    teacher = new_encoder(spec, len(tokenizer), task.n_classes, length + 1, seed=seed).to(device)
    runs = {"teacher": train_classifier(teacher, task, steps=teacher_steps, **common)}
    models = {"teacher": teacher}
    students = {"random init + CE": ("random", False), "teacher init + CE": ("teacher", False),
                "teacher init + KD": ("teacher", True)}
    for name, (init, distil) in students.items():
        student = half_depth_student(teacher, init=init, seed=seed + 1)
        runs[name] = train_classifier(student, task, steps=student_steps, teacher=teacher if distil else None,
                                      temperature=temperature, alpha=alpha, **common)
        models[name] = student
    rates = time_models(models, task.test_ids[:timing_passages], repeats=timing_repeats)
    rows = [{"name": name, "layers": m.config.num_hidden_layers, "params": param_count(m),
             "layer_params": layer_param_count(m), "test_acc": runs[name].test_acc,
             "passages_per_s": rates[name]} for name, m in models.items()]
    return {"rows": rows, "task": task.sizes(), "runs": runs, "models": models,
            "seconds": time.perf_counter() - start}
