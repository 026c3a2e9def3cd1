"""course_lib.distill: the experiments' helpers, the student, context distillation, the teaching tables."""

import math

import pytest
import torch

from course_lib.distill.experiments import (PROFILES, RUNS, gradient_norms, storage_bytes, temperature_rows)
from course_lib.distill.incontext import context_logits, context_task, distil_context, window_scores
from course_lib.distill.student import STUDENT, new_student, param_count
from course_lib.distill.teach import final_rows
from course_lib.distill.trainer import DistillConfig
from course_lib.lm.models import load_tokenizer, tiny_model


def test_profiles_are_complete_and_grow():
    keys = {"train", "eval_tokens", "samples", "prompt_len", "sample_batch", "context", "encoder"}
    for name, prof in PROFILES.items():
        assert keys <= set(prof), name
        assert isinstance(prof["train"], DistillConfig) and prof["prompt_len"] < prof["train"].seq_len
    assert PROFILES["small"]["train"].tokens < PROFILES["medium"]["train"].tokens < PROFILES["large"]["train"].tokens
    assert set(RUNS) == {"CE on the corpus", "logit KD on the corpus", "sequence-level KD (teacher's text)",
                         "logit KD on the teacher's text"}


def test_student_is_a_quarter_of_the_teacher():
    tok = load_tokenizer()
    student = new_student(tok)
    assert param_count(student) == 2_229_888
    assert student.config.hidden_size == STUDENT.hidden and student.config.num_hidden_layers == STUDENT.layers
    again = new_student(tok)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), again.parameters()))  # seeded


def test_temperature_rows_flatten_the_distribution():
    logits = torch.tensor([4.0, 2.0, 1.0, 0.0, -1.0])
    rows = temperature_rows(logits, temperatures=(0.5, 1.0, 4.0))
    assert [r["T"] for r in rows] == [0.5, 1.0, 4.0]
    assert rows[0]["top-1 p"] > rows[1]["top-1 p"] > rows[2]["top-1 p"]
    assert rows[0]["entropy (nats)"] < rows[2]["entropy (nats)"] < math.log(5)
    assert rows[1]["top-1 p"] == pytest.approx(torch.softmax(logits, 0).max().item())
    assert rows[0]["tokens for 90%"] == 1 and rows[2]["tokens for 90%"] == 5


def test_gradient_norms_t_squared_scaling():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 50, generator=g), torch.randn(6, 50, generator=g)
    rows = gradient_norms(s, t, temperatures=(1.0, 10.0, 20.0, 40.0))
    for r in rows:
        assert r["grad norm, T^2 KL"] == pytest.approx(r["T"] ** 2 * r["grad norm, KL"])
    # at high T: plain KL gradient ~ 1/T^2, scaled one ~ constant
    assert rows[3]["grad norm, KL"] / rows[2]["grad norm, KL"] == pytest.approx(0.25, rel=0.05)
    assert rows[3]["grad norm, T^2 KL"] / rows[2]["grad norm, T^2 KL"] == pytest.approx(1.0, rel=0.05)


def test_storage_bytes_counts_quantized_linears_only():
    model = tiny_model("llama")
    fp16 = storage_bytes(model)
    assert fp16 == 2 * sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    assert storage_bytes(model, 4.0) == fp16 - linear * 12 // 8


def test_final_rows():
    curves = {"CE on the corpus": [{"tokens": 0, "val_loss": 5.0, "val_kl": 2.0}, {"tokens": 10, "val_loss": 4.0},
                                   {"tokens": 20, "val_loss": 4.2, "val_kl": 0.5}],
              "kd": [{"tokens": 0, "val_loss": 5.0}, {"tokens": 10, "val_loss": 4.1}, {"tokens": 20, "val_loss": 3.9}]}
    rows = {r["run"]: r for r in final_rows(curves)}
    assert rows["CE on the corpus"]["best val ppl"] == pytest.approx(math.exp(4.0))
    assert rows["CE on the corpus"]["final val ppl"] == pytest.approx(math.exp(4.2))
    assert rows["kd"]["ppl vs CE only"] == pytest.approx(math.exp(-0.1))


def test_context_task_windows_do_not_overlap_and_errors_are_clear():
    tok = load_tokenizer()
    task = context_task(tok, prefix_tokens=32, window=16, n_train=8, n_test=4)
    assert task.prefix.shape == (32,) and task.other_prefix.shape == (32,)
    assert task.train.shape == (8, 16) and task.test.shape == (4, 16)
    assert not torch.equal(task.prefix, task.other_prefix)
    with pytest.raises(ValueError, match="No work titled"):
        context_task(tok, title="Hamlett")
    with pytest.raises(ValueError, match="too few"):
        context_task(tok, n_train=100_000)


def test_context_distillation_moves_the_student_toward_the_prefixed_teacher():
    teacher = tiny_model("llama", vocab_size=64, seed=3)
    g = torch.Generator().manual_seed(0)
    windows, prefix = torch.randint(0, 64, (16, 12), generator=g), torch.randint(0, 64, (10,), generator=g)
    target = context_logits(teacher, windows, prefix)
    assert target.shape == (16, 12, 64)
    assert not torch.allclose(target, context_logits(teacher, windows, None))  # the prefix changes the logits
    student = tiny_model("llama", vocab_size=64, seed=3)  # a copy of the teacher
    before = window_scores(context_logits(student, windows, None), windows, target)["kl"]
    losses = distil_context(student, target, windows, steps=30, batch_size=8, lr=3e-3, progress=False)
    after = window_scores(context_logits(student, windows, None), windows, target)["kl"]
    assert after < 0.5 * before and len(losses) == 30
    with pytest.raises(ValueError, match="must cover"):
        distil_context(student, target[:4], windows, steps=1, progress=False)


def test_bench_distill_refuses_bad_parts_and_missing_cuda(capsys):
    from course_lib.bench import main
    from course_lib.distill.experiments import record_distill

    with pytest.raises(ValueError, match="part must be"):
        record_distill(part="everything")
    if not torch.cuda.is_available():
        assert main(["distill", "--device", "cuda"]) == 2
        assert "error:" in capsys.readouterr().err
