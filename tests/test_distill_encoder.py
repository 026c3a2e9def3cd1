"""Distilling an encoder: the passage task, the half-depth student, training, KD, timing (tiny models)."""

from __future__ import annotations

import copy
import inspect
import dataclasses
import math

import pytest
import torch

from course_lib.distill.encoder import (DISTILBERT_PUBLISHED, ENCODER_PROFILES, WORKS, EncoderSpec, accuracy,
                                        available_titles, half_depth_student, layer_param_count, new_encoder,
                                        param_count, passage_task, run_encoder_experiment, time_models,
                                        train_classifier)
from course_lib.distill.encoder_task import work_tokens
from course_lib.lm.models import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = EncoderSpec(hidden=16, layers=4, heads=2, intermediate=32, dropout=0.0, init_std=0.1)
EASY = ("Paradise Lost", "Twelfth Night")  # Milton's epic against a comedy with speaker names


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def easy(tok):
    return passage_task(tok, EASY, length=32, max_per_class=150)


def _windows_of(tokens, length: int) -> set[tuple[int, ...]]:
    return {tuple(tokens[i: i + length]) for i in range(0, len(tokens) - length + 1, length)}


# ---- the task -------------------------------------------------------------------------------

def test_task_is_balanced_labelled_and_prefixed_with_cls(tok):
    task = passage_task(tok)
    assert task.names == WORKS and 6 <= len(WORKS) <= 8
    assert task.train_ids.shape[1] == task.test_ids.shape[1] == 65 and task.length == 64
    assert task.train_ids.dtype == torch.long and len(task.train_ids) == len(task.train_labels)
    assert (task.train_ids[:, 0] == tok.bos_token_id).all() and (task.test_ids[:, 0] == tok.bos_token_id).all()
    for labels in (task.train_labels, task.test_labels):
        counts = torch.bincount(labels, minlength=len(WORKS))
        assert len(counts) == len(WORKS) and (counts == counts[0]).all() and counts[0] > 0
    # the smallest work sets the count of every class
    smallest = min(len(work_tokens(tok, t)) for t in WORKS)
    assert int(torch.bincount(task.train_labels)[0]) == int(smallest * 0.85) // 64
    assert task.sizes()["chance"] == pytest.approx(1 / 6)


def test_test_passages_come_from_the_unseen_end_of_each_work(tok):
    length = 32
    task = passage_task(tok, EASY, length=length)
    for label, title in enumerate(EASY):
        tokens = work_tokens(tok, title)
        cut = int(len(tokens) * 0.85)
        head, tail = _windows_of(tokens[:cut], length), _windows_of(tokens[cut:], length)
        train = {tuple(r[1:].tolist()) for r in task.train_ids[task.train_labels == label]}
        test = {tuple(r[1:].tolist()) for r in task.test_ids[task.test_labels == label]}
        assert train <= head and test <= tail
        assert not train & test
        assert len(test) == int(task.sizes()["test"] / 2)  # no duplicated passage


def test_task_is_deterministic_and_capped(tok, easy):
    again = passage_task(tok, EASY, length=32, max_per_class=150)
    assert torch.equal(again.train_ids, easy.train_ids) and torch.equal(again.test_labels, easy.test_labels)
    other = passage_task(tok, EASY, length=32, max_per_class=150, seed=1)
    assert not torch.equal(other.train_labels, easy.train_labels)
    assert len(easy.train_labels) == 300 and set(easy.train_labels.tolist()) == {0, 1}


def test_task_errors(tok):
    with pytest.raises(ValueError, match="Hamlet") as info:
        passage_task(tok, ("Hamlet", "Hamlet II"))
    assert "Hamlet II" in str(info.value) and "Available titles" in str(info.value)
    with pytest.raises(ValueError, match="at least 2"):
        passage_task(tok, ("Hamlet",))
    with pytest.raises(ValueError, match="only once"):
        passage_task(tok, ("Hamlet", "Hamlet", "Macbeth"))
    with pytest.raises(ValueError, match="too few"):
        passage_task(tok, ("Hamlet", "The Phoenix and the Turtle"), length=200)
    with pytest.raises(ValueError, match="test_fraction"):
        passage_task(tok, EASY, test_fraction=1.0)
    assert "Paradise Lost" in available_titles()


# ---- models ---------------------------------------------------------------------------------

def test_encoder_is_bidirectional_and_seeded():
    model = new_encoder(TINY, 4096, 3, 17).eval()
    assert model.config.num_hidden_layers == 4 and model.config.num_labels == 3 and not model.config.is_decoder
    ids = torch.randint(1, 4096, (2, 17), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 4096
    with torch.no_grad():
        # the CLS logits see the LAST token: attention runs both ways
        assert not torch.allclose(model(input_ids=ids).logits, model(input_ids=changed).logits)
    same, other = new_encoder(TINY, 4096, 3, 17), new_encoder(TINY, 4096, 3, 17, seed=1)
    first = model.state_dict()
    assert all(torch.equal(first[k], v) for k, v in same.state_dict().items())
    assert not torch.equal(first["classifier.weight"], other.state_dict()["classifier.weight"])
    assert param_count(model) == sum(p.numel() for p in model.parameters())


def test_half_depth_student_copies_one_layer_out_of_two():
    teacher = new_encoder(TINY, 4096, 3, 17)
    student = half_depth_student(teacher, init="teacher")
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    t_layers, s_layers = teacher.bert.encoder.layer, student.bert.encoder.layer
    for i in range(2):
        t_state, s_state = t_layers[2 * i].state_dict(), s_layers[i].state_dict()
        assert s_state.keys() == t_state.keys()
        assert all(torch.equal(s_state[k], t_state[k]) for k in s_state)
    assert not torch.equal(s_layers[1].output.dense.weight, t_layers[1].output.dense.weight)
    for name in ("bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.bias"):
        assert torch.equal(student.state_dict()[name], teacher.state_dict()[name])
    assert layer_param_count(student) * 2 == layer_param_count(teacher)
    assert param_count(teacher) - param_count(student) == layer_param_count(student)

    random = half_depth_student(teacher, init="random")
    assert random.config.num_hidden_layers == 2
    assert not torch.equal(random.bert.encoder.layer[0].output.dense.weight, t_layers[0].output.dense.weight)
    again = half_depth_student(teacher, init="random")
    assert torch.equal(again.classifier.weight, random.classifier.weight)


@pytest.mark.parametrize("layers", [1, 3])
def test_half_depth_student_needs_an_even_depth(layers):
    teacher = new_encoder(EncoderSpec(hidden=16, layers=layers, heads=2, intermediate=32), 64, 2, 9)
    with pytest.raises(ValueError, match="even number"):
        half_depth_student(teacher)


def test_half_depth_student_rejects_unknown_init():
    with pytest.raises(ValueError, match="init"):
        half_depth_student(new_encoder(TINY, 64, 2, 9), init="copy")


# ---- training, accuracy, timing -------------------------------------------------------------

def test_training_is_deterministic(easy):
    def run(seed=0):  # with dropout on, so the seed must fix the dropout masks too
        model = new_encoder(dataclasses.replace(TINY, dropout=0.1), 4096, 2, easy.length + 1)
        return model, train_classifier(model, easy, steps=6, batch_size=8, eval_every=3, progress=False, seed=seed)

    (m1, r1), (m2, r2), (_, r3) = run(), run(), run(seed=1)
    assert [row["step"] for row in r1.log] == [3, 6]
    assert r1.log == r2.log and r1.test_acc == r2.test_acc
    assert torch.equal(m1.classifier.weight, m2.classifier.weight)
    assert r3.log != r1.log
    assert r1.seconds > 0


def test_short_training_beats_chance_on_an_easy_task(easy):
    model = new_encoder(TINY, 4096, 2, easy.length + 1)
    before = accuracy(model, easy.test_ids, easy.test_labels)
    run = train_classifier(model, easy, steps=60, batch_size=32, lr=3e-3, progress=False)
    assert run.test_acc == pytest.approx(accuracy(model, easy.test_ids, easy.test_labels))
    assert run.test_acc > 0.8 and run.test_acc > before + 0.2
    assert run.log[-1]["step"] == 60 and run.log[-1]["train_loss"] < math.log(2)


def test_accuracy_of_a_constant_classifier(easy):
    model = new_encoder(TINY, 4096, 2, easy.length + 1)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0, 0.0]))  # always class 0
    model.train()
    acc = accuracy(model, easy.test_ids, easy.test_labels, batch_size=7)
    assert acc == pytest.approx(float((easy.test_labels == 0).float().mean())) and acc == pytest.approx(0.5)
    assert model.training  # mode restored


def test_distillation_uses_the_teacher(easy):
    teacher = new_encoder(TINY, 4096, 2, easy.length + 1)
    # alpha = 0: the loss is T^2 KL(teacher || student), zero for a student identical to the teacher
    twin = copy.deepcopy(teacher)
    same = train_classifier(twin, easy, steps=1, batch_size=8, teacher=teacher, alpha=0.0, progress=False)
    assert same.log[0]["train_loss"] == pytest.approx(0.0, abs=1e-6)
    stranger = new_encoder(TINY, 4096, 2, easy.length + 1, seed=5)
    with torch.no_grad():
        stranger.classifier.bias.copy_(torch.tensor([3.0, -3.0]))
    other = train_classifier(copy.deepcopy(teacher), easy, steps=1, batch_size=8, teacher=stranger, alpha=0.0,
                             progress=False)
    assert other.log[0]["train_loss"] > 0.1
    # alpha = 1: pure cross-entropy, the teacher no longer matters
    ce = train_classifier(copy.deepcopy(teacher), easy, steps=1, batch_size=8, progress=False)
    hard = train_classifier(copy.deepcopy(teacher), easy, steps=1, batch_size=8, teacher=stranger, alpha=1.0,
                            progress=False)
    assert hard.log[0]["train_loss"] == pytest.approx(ce.log[0]["train_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="same task"):
        train_classifier(copy.deepcopy(teacher), easy, steps=1, teacher=new_encoder(TINY, 4096, 3, 33),
                         progress=False)


def test_time_models_gives_a_rate_per_model(easy):
    deep = new_encoder(TINY, 4096, 2, easy.length + 1)
    shallow = half_depth_student(deep)
    rates = time_models({"deep": deep, "shallow": shallow}, easy.test_ids[:32], batch_size=16, repeats=2)
    assert set(rates) == {"deep", "shallow"}
    assert all(math.isfinite(r) and r > 0 for r in rates.values())
    assert deep.training and shallow.training  # modes restored
    with pytest.raises(ValueError):
        time_models({}, easy.test_ids)


def test_published_distilbert_numbers_are_consistent():
    bert, distil = DISTILBERT_PUBLISHED
    assert (bert["layers"], distil["layers"]) == (12, 6)
    assert 1 - distil["params_M"] / bert["params_M"] == pytest.approx(0.40, abs=0.01)  # "40% smaller"
    assert distil["glue_dev"] / bert["glue_dev"] == pytest.approx(0.97, abs=0.005)  # "97% of the performance"
    assert bert["stsb_cpu_s"] / distil["stsb_cpu_s"] == pytest.approx(1.6, abs=0.05)  # "60% faster"
    assert distil["imdb_acc"] < bert["imdb_acc"]


def test_experiment_smoke(tok):
    out = run_encoder_experiment(tok, teacher_steps=3, student_steps=2, batch_size=4, length=16, device="cpu",
                                 progress=False, spec=TINY, works=EASY, timing_passages=8, timing_repeats=1)
    names = [r["name"] for r in out["rows"]]
    assert names == ["teacher", "random init + CE", "teacher init + CE", "teacher init + KD"]
    teacher, *students = out["rows"]
    assert teacher["layers"] == 4 and all(s["layers"] == 2 for s in students)
    assert all(s["params"] < teacher["params"] and s["passages_per_s"] > 0 for s in students)
    assert all(0 <= r["test_acc"] <= 1 for r in out["rows"])
    assert out["task"]["classes"] == 2 and out["task"]["length"] == 16 and out["seconds"] > 0
    again = run_encoder_experiment(tok, teacher_steps=3, student_steps=2, batch_size=4, length=16, device="cpu",
                                   progress=False, spec=TINY, works=EASY, timing_passages=8, timing_repeats=1)
    assert [r["test_acc"] for r in again["rows"]] == [r["test_acc"] for r in out["rows"]]
    assert [again["runs"][n].log for n in names] == [out["runs"][n].log for n in names]


def test_profiles_fit_the_experiment(tok):
    assert set(ENCODER_PROFILES) == {"small", "large"}
    for profile in ENCODER_PROFILES.values():
        inspect.signature(run_encoder_experiment).bind(tok, **profile)  # every key is an argument
        assert profile["spec"].layers % 2 == 0 and profile["teacher_steps"] > profile["student_steps"]
