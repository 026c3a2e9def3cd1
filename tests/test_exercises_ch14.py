"""Chapter 14's questions and project: plausible wrong solutions fail with a hint that names their mistake, correct
variants pass, garbage never makes a check raise, the cases cover what they claim; and the project's check passes a
real compressed checkpoint, fails the float model (too big) and GPTQ at 2 bits (too much perplexity), and says
clearly what is wrong with a directory it cannot use.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails: for the project, that the reference solution's GPTQ checkpoint passes.)
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from course_lib.exercises import ch14, load_solutions
from course_lib.quant.affine import fake_quantize
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch14")


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("name, n_cases", [("sqnr_db", 19), ("kv_crossover", 6), ("traffic_saving", 6),
                                           ("best_under_budget", 13), ("token_kl", 17)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    ok, out = run(ch14.EXERCISES[name], getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out
    ok, out = run(ch14.EXERCISES[name], stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


# --- Q1: sqnr_db --------------------------------------------------------------------------------------------------------

def _sqnr(w_hat_fn, scale=lambda r: 10 * torch.log10(r)):
    def fn(w, bits, g):
        w_hat = w_hat_fn(w, bits, g)
        return scale(w.double().pow(2).sum(-1) / (w.double() - w_hat.double()).pow(2).sum(-1))
    return fn


def _asym(w, bits, g):
    return fake_quantize(w, bits, symmetric=False, granularity="group", group_size=g)


def _no_zero_guard(w, bits, g):
    out_f, in_f = w.shape
    b = w.reshape(out_f, in_f // g, g)
    lo, hi = b.amin(-1, keepdim=True).clamp(max=0), b.amax(-1, keepdim=True).clamp(min=0)
    s = (hi - lo) / (2**bits - 1)                       # 0 for a group of zeros: 0 / 0 below
    z = torch.round(-lo / s)
    return (s * (torch.clamp(torch.round(b / s) + z, 0, 2**bits - 1) - z)).reshape(out_f, in_f)


SQNR_WRONG = {
    "20log10": (_sqnr(_asym, lambda r: 20 * torch.log10(r)), "20 log10 is for amplitudes"),
    "natural log": (_sqnr(_asym, lambda r: 10 * torch.log(r)), "you took the natural log"),
    "the ratio": (_sqnr(_asym, lambda r: r), "you returned the power ratio itself"),
    "noise / signal": (_sqnr(_asym, lambda r: 10 * torch.log10(1 / r)), "your ratio is upside down"),
    "symmetric": (_sqnr(lambda w, b, g: fake_quantize(w, b, symmetric=True, granularity="group", group_size=g,
                                                      restricted=True)), "your grid is symmetric"),
    "per row": (_sqnr(lambda w, b, g: fake_quantize(w, b, symmetric=False, granularity="channel")),
                "you used one scale per row"),
    "no zero guard": (_sqnr(_no_zero_guard), "your result holds NaN or inf: a group of zeros"),
}


@pytest.mark.parametrize("kind", SQNR_WRONG)
def test_a_wrong_sqnr_is_named(kind, capsys):
    fn, words = SQNR_WRONG[kind]
    ok, out = run(ch14.check_sqnr_db, fn, capsys)
    assert not ok and words in hint_of(out), out


def test_the_sqnr_right_in_other_ways_passes(capsys):
    assert run(ch14.check_sqnr_db, _sqnr(_asym), capsys)[0]  # course_lib's quantizer, float64 sums
    assert run(ch14.check_sqnr_db, lambda w, b, g: SOL.sqnr_db(w, b, g).float(), capsys)[0]


def test_sqnr_in_float16_gets_the_general_hint(capsys):
    ok, out = run(ch14.check_sqnr_db, lambda w, b, g: SOL.sqnr_db(w.half().float(), b, g), capsys)
    assert not ok and hint_of(out).startswith("quantize as chapter 02 did"), out


# --- Q2 and Q3: the warm-ups --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("wrong", [lambda w, k, b: w / (k * b),                 # not a whole number of tokens
                                   lambda w, k, b: math.ceil(w / (k * b)),      # equal, not more, when it divides
                                   lambda w, k, b: w // k + 1])                 # the batch forgotten
def test_wrong_crossovers_fail(wrong, capsys):
    ok, out = run(ch14.check_kv_crossover, wrong, capsys)
    assert not ok and "Hint: the cache holds" in out, out


def test_the_crossover_cases_come_from_the_recording():
    from course_lib import load_result

    s = load_result("h200_kv_decode").summary
    args = [a for a, _ in ch14.kv_crossover_cases()]
    assert (int(s["weight_bytes"]), int(s["kv_bytes_per_token"]), 64) in args
    assert any(w % (k * b) == 0 for w, k, b in args)  # one budget where "equal" and "more" differ


def _saving(block_q=lambda M, d: min(math.ceil(M / (4 * d)), d), ceil=math.ceil, naive_nd=True, invert=False):
    def fn(n, d, M):
        naive = (4 * n * d if naive_nd else 0) + 4 * n * n
        tiled = 2 * n * d + 2 * d * n * ceil(n / block_q(M, d))
        return tiled / naive if invert else naive / tiled
    return fn


@pytest.mark.parametrize("wrong", [_saving(block_q=lambda M, d: math.ceil(M / (4 * d))),   # block_q not capped at d
                                   _saving(ceil=math.floor),                               # the short last block lost
                                   _saving(naive_nd=False), _saving(invert=True)])
def test_wrong_traffic_savings_fail(wrong, capsys):
    ok, out = run(ch14.check_traffic_saving, wrong, capsys)
    assert not ok and "Hint: naive = 4nd + 4n²" in out, out


def test_the_traffic_cases_include_a_saving_below_one_and_ragged_blocks():
    values = {a: ch14.reference_traffic_saving(*a) for a in ch14.TRAFFIC_ARGS}
    assert min(values.values()) < 1 < max(values.values())  # a small SRAM: tiling moves more than naive
    assert any(n % min(math.ceil(M / (4 * d)), d) for n, d, M in ch14.TRAFFIC_ARGS)


# --- Q4: best_under_budget ----------------------------------------------------------------------------------------------

def _best(fit=lambda r, b: r["bytes"] <= b, tie=lambda r, best: r["lo"] <= best["hi"], key=lambda r: r["ppl"],
          pick=lambda r: r["ppl"]):
    def fn(rows, budget):
        fits = sorted((r for r in rows if fit(r, budget)), key=pick)
        if not fits:
            return []
        return [r["variant"] for r in sorted((r for r in fits if tie(r, fits[0])), key=key)]
    return fn


BEST_WRONG = {
    "strict budget": (_best(fit=lambda r, b: r["bytes"] < b), "equal the budget fits it"),
    "budget ignored": (_best(fit=lambda r, b: True), "you ranked variants that do not fit"),
    "best only": (_best(tie=lambda r, best: r is best), "you returned the best variant alone"),
    "every fit": (_best(tie=lambda r, best: True), "you returned every variant that fits"),
    "point in interval": (_best(tie=lambda r, best: r["ppl"] <= best["hi"]), "you compared the point estimates"),
    "smallest first": (_best(pick=lambda r: r["bytes"]), "you started from the smallest variant"),
    "ordered by bytes": (_best(key=lambda r: r["bytes"]), "right variants, wrong order"),
}


@pytest.mark.parametrize("kind", BEST_WRONG)
def test_a_wrong_selection_is_named(kind, capsys):
    fn, words = BEST_WRONG[kind]
    ok, out = run(ch14.check_best_under_budget, fn, capsys)
    assert not ok and words in hint_of(out), out


def test_a_selection_in_other_words_passes(capsys):
    def by_loop(rows, budget):
        best = None
        for r in rows:
            if r["bytes"] <= budget and (best is None or r["ppl"] < best["ppl"]):
                best = r
        return [] if best is None else [r["variant"] for r in sorted(rows, key=lambda r: r["ppl"])
                                        if r["bytes"] <= budget and r["lo"] <= best["hi"]]
    assert run(ch14.check_best_under_budget, by_loop, capsys)[0]
    assert run(ch14.check_best_under_budget, lambda rows, b: tuple(SOL.best_under_budget(rows, b)), capsys)[0]


def test_the_selection_cases_cover_their_edges():
    labels, cases = ch14.best_under_budget_cases()
    answers = [ch14.reference_best_under_budget(*c) for c in cases]
    assert [] in answers and any(len(a) >= 2 for a in answers)  # nothing fits; a tie
    assert any(any(r["bytes"] == budget for r in rows) for rows, budget in cases)
    for rows, budget in cases:  # no two variants share a perplexity: the order is defined
        assert len({r["ppl"] for r in rows}) == len(rows) and all(r["lo"] < r["ppl"] < r["hi"] for r in rows)


# --- Q5: token_kl -------------------------------------------------------------------------------------------------------

def _kl(inner, reduce=lambda t: t.sum(-1), direction="pq"):
    def fn(ref, q):
        a, b = (ref, q) if direction == "pq" else (q, ref)
        la, lb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
        terms = torch.where(la > -math.inf, la.exp() * inner(la, lb, a.double(), b.double()), torch.zeros_like(la))
        return reduce(terms)
    return fn


KL_WRONG = {
    "reversed": (_kl(lambda la, lb, a, b: la - lb, direction="qp"), "your KL runs the other way"),
    "kl_div reversed": (lambda ref, q: F.kl_div(torch.log_softmax(ref, -1), torch.log_softmax(q, -1), log_target=True,
                                                reduction="none").sum(-1), "your KL runs the other way"),
    "mean over vocab": (_kl(lambda la, lb, a, b: la - lb, reduce=lambda t: t.mean(-1)), "you averaged over the vocab"),
    "bits": (_kl(lambda la, lb, a, b: (la - lb) / math.log(2)), "your KL is in bits"),
    "cross-entropy": (_kl(lambda la, lb, a, b: -lb), "you computed the cross-entropy"),
    "raw logits": (_kl(lambda la, lb, a, b: a - b), "you used raw logits"),
    "kl_div on probabilities": (lambda ref, q: F.kl_div(torch.softmax(q, -1), torch.softmax(ref, -1),
                                                        reduction="none").sum(-1), "F.kl_div's input must be"),
    "log of softmax": (lambda ref, q: (torch.softmax(ref, -1) * (torch.softmax(ref, -1).log()
                                                                 - torch.softmax(q, -1).log())).sum(-1),
                       "your result holds NaN or inf"),
    "exp overflow": (lambda ref, q: (lambda p, r: (p * (torch.log(p) - torch.log(r))).sum(-1))(
        ref.exp() / ref.exp().sum(-1, keepdim=True), q.exp() / q.exp().sum(-1, keepdim=True)),
        "your result holds NaN or inf"),
}


@pytest.mark.parametrize("kind", KL_WRONG)
def test_a_wrong_kl_is_named(kind, capsys):
    fn, words = KL_WRONG[kind]
    ok, out = run(ch14.check_token_kl, fn, capsys)
    assert not ok and words in hint_of(out), out


def test_a_batchmean_kl_is_refused_for_its_shape(capsys):
    ok, out = run(ch14.check_token_kl, lambda ref, q: SOL.token_kl(ref, q).mean(), capsys)
    assert not ok and "expected a tensor of shape (6,), got one of shape ()" in out, out


def test_kl_in_other_forms_passes(capsys):
    def kl_div(ref, q):  # F.kl_div the right way round, with the masked entries zeroed
        lp, lq = torch.log_softmax(ref, -1), torch.log_softmax(q, -1)
        terms = F.kl_div(lq, lp, log_target=True, reduction="none")
        return torch.where(lp > -math.inf, terms, torch.zeros_like(terms)).sum(-1)

    assert run(ch14.check_token_kl, kl_div, capsys)[0]
    assert run(ch14.check_token_kl, lambda ref, q: SOL.token_kl(ref.float(), q.float()).float(), capsys)[0]


def test_the_reference_kl_is_course_libs_mean_kl():
    from course_lib.mixed.sensitivity import kl_divergence

    for ref, q in ch14.token_kl_cases()[1][:12]:
        mine = ch14.reference_token_kl(ref, q).mean().item()
        theirs = kl_divergence(torch.log_softmax(ref.double(), -1), torch.log_softmax(q.double(), -1))
        assert math.isclose(mine, theirs, rel_tol=1e-9, abs_tol=1e-15)


def test_float32_rounding_is_well_inside_the_kl_tolerance():
    def float32_kl(ref, q):
        lp, lq = torch.log_softmax(ref.float(), -1), torch.log_softmax(q.float(), -1)
        return torch.where(lp > -math.inf, lp.exp() * (lp - lq), torch.zeros_like(lp)).sum(-1)

    worst = max(float((float32_kl(*a).double() - ch14.reference_token_kl(*a)).abs().max())
                for a in ch14.token_kl_cases()[1])
    assert worst < ch14.KL_ATOL / 2


# --- garbage never makes a check raise -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sqnr_db", "kv_crossover", "traffic_saving", "best_under_budget", "token_kl"])
@pytest.mark.parametrize("garbage", [None, "text", [1, 2], {"a": 1}, float("nan"), torch.zeros(3, 5)],
                         ids=["none", "str", "list", "dict", "nan", "wrong shape"])
def test_a_check_never_raises_on_garbage(name, garbage, capsys):
    ok, out = run(ch14.EXERCISES[name], lambda *a: garbage, capsys)
    assert ok is False and out.startswith(f"[x] {name}: "), out


# --- the project ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def course_model():
    from course_lib.lm.models import load_model

    return load_model("course-model", dtype=torch.float32, device="cpu")


def _gptq_checkpoint(model, tok, bits, out, *, stored_bits=None):
    from course_lib.gptq import gptq_quantize_model, save_gptq_checkpoint
    from course_lib.lm.tokens import calibration_batches

    m = copy.deepcopy(model)
    report = gptq_quantize_model(m, calibration_batches(tok, 16, 128, seed=0), bits, symmetric=False, progress=False)
    if stored_bits:  # the codes of a coarser grid, stored in a checkpoint of more bits per code
        report.bits = stored_bits
        report.results = {k: dataclasses.replace(r, bits=stored_bits) for k, r in report.results.items()}
    return save_gptq_checkpoint(m.to(torch.float16), report, out, tokenizer=tok)


def test_a_gptq_4bit_checkpoint_passes(course_model, tmp_path, capsys):
    pytest.importorskip("gptqmodel")
    d = _gptq_checkpoint(*course_model, 4, tmp_path / "gptq4")   # groups of 128 (the solution uses 64)
    ok, out = run(ch14.check_project, d, capsys)
    assert ok is True and "within the budget" in out and "within the threshold" in out, out
    assert out.splitlines()[-1].startswith("[ok] project: passed: course-model in 7.5"), out


def test_the_float_model_does_not_fit(course_model, tmp_path, capsys):
    from course_lib.eval.storage import save_dense

    model, tok = course_model
    d = save_dense(model, tmp_path / "bf16")
    model.config.save_pretrained(d)
    ok, out = run(ch14.check_project, d, capsys)
    assert ok is False and "OVER the budget" in out and "within the threshold" in out, out
    assert "bytes over the budget. Hint: everything in the weight files counts" in out


def test_gptq_at_2_bits_fits_but_loses_too_much(course_model, tmp_path, capsys):
    pytest.importorskip("gptqmodel")
    d = _gptq_checkpoint(*course_model, 2, tmp_path / "gptq2", stored_bits=4)
    ok, out = run(ch14.check_project, d, capsys)
    assert ok is False and "within the budget" in out and "ABOVE the threshold" in out, out
    assert "above the threshold. Hint: every bit below 4" in out


def test_a_gguf_file_is_measured_as_the_leaderboard_measures_it(course_model, tmp_path, capsys):
    pytest.importorskip("gguf")
    from course_lib.core.results import load_result
    from course_lib.lm.models import model_source
    from course_lib.mixed import gguf_io

    model, tok = course_model
    d = tmp_path / "q40"
    d.mkdir()
    gguf_io.write_gguf(model, d / "model.gguf", "Q4_0", tokenizer_json=Path(model_source("course-model"), "tokenizer.json"))
    ok, out = run(ch14.check_project, d, capsys)
    assert ok is True and "within the budget" in out, out
    row = next(r for r in load_result("cpu_leaderboard").rows if r["model"] == "course-model" and r["variant"] == "GGUF Q4_0")
    # the same file the leaderboard wrote, to the byte, and its perplexity to four digits
    assert f"{row['bytes']:,} bytes" in out and f"perplexity: {row['ppl']:.4g}" in out, out
    (d / "other.gguf").write_bytes((d / "model.gguf").read_bytes())
    ok, out = run(ch14.check_project, d, capsys)
    assert not ok and "2 GGUF files in one directory" in out, out


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "missing", "there is no directory missing."),
    (lambda p: p, "there are no weight files (*.safetensors, *.gguf) in it."),
    (lambda p: (p / "model.safetensors").write_bytes(b"not a checkpoint") and p, "there is no config.json"),
    (lambda p: 42, "expected a directory (a str or Path) or a function"),
], ids=["no directory", "empty", "no config", "not a path"])
def test_bad_input_gives_a_clear_error(make, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    target = make(tmp_path)
    ok, out = run(ch14.check_project, target, capsys)
    assert ok is False and words in out and str(tmp_path) not in out, out


def test_a_function_that_saves_nothing_or_fails_is_told_so(capsys):
    ok, out = run(ch14.check_project, lambda model, tok, out_dir: None, capsys)
    assert not ok and "[x] project: out_dir: there are no weight files" in out, out
    ok, out = run(ch14.check_project, lambda model, tok, out_dir: 1 / 0, capsys)
    assert not ok and "raised ZeroDivisionError" in out, out


def test_another_models_checkpoint_is_refused(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    ok, out = run(ch14.check_project, tmp_path / "tiny", capsys)
    assert not ok and "it is not a compressed course-model" in out, out


def test_the_targets():
    small, large = ch14.project_target("course-model"), ch14.project_target("smollm2-135m")
    assert (small.budget_bytes, small.max_increase) == (8_000_000, 0.03) and abs(small.float_ppl - 44.29) < 0.01
    assert (large.budget_bytes, large.max_increase) == (120_000_000, 0.20) and abs(large.float_ppl - 52.48) < 0.01
    assert ch14.project_target().model == "course-model"  # the small profile: no GPU here
