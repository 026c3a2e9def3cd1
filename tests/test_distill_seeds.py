"""course_lib.distill.seeds: CE-only vs logit-KD students over seeds, the paired gain, the bench part."""

import json
import math

import pytest
import torch

from course_lib.distill.experiments import PROFILES
from course_lib.distill.seeds import CE, KD, SEED_RUNS, record_seeds, seed_config, seed_table, summarize
from course_lib.distill.trainer import CorpusWindows, DistillConfig, evaluate, make_eval_set, train_student
from course_lib.lm.models import tiny_model


def test_seed_config_keeps_the_profile_or_scales_a_shorter_run():
    large = PROFILES["large"]["train"]
    cfg = seed_config("large", seed=2)
    assert cfg.seed == 2 and (cfg.steps, cfg.warmup, cfg.eval_every) == (large.steps, large.warmup, large.eval_every)
    short = seed_config("large", seed=0, steps=1000)
    assert (short.steps, short.warmup, short.eval_every, short.lr) == (1000, 50, 100, large.lr)
    assert seed_config("small", steps=2).eval_every >= 1
    with pytest.raises(ValueError, match="profile"):
        seed_config("huge")
    with pytest.raises(ValueError, match="steps"):
        seed_config("large", steps=0)


def _row(seed, run, best, final, step=10):
    return {"seed": seed, "run": run, "best val ppl": best, "final val ppl": final, "best step": step,
            "test ppl (best)": best * 1.05, "test ppl (final)": final * 1.05}


def test_summarize_pairs_the_runs_of_each_seed():
    rows = [_row(0, CE, 50.0, 55.0), _row(0, KD, 40.0, 40.0), _row(1, CE, 48.0, 52.0), _row(1, KD, 42.0, 42.0),
            _row(2, KD, 10.0, 10.0)]  # seed 2 has no CE partner: left out of the pairs
    s = summarize(rows)
    assert s["seeds"] == [0, 1]
    assert s["gain"]["per_seed"] == pytest.approx([0.2, 0.125])
    assert s["gain"]["mean"] == pytest.approx(0.1625) and s["gain"]["sd"] == pytest.approx(0.075 / math.sqrt(2))
    assert s["gain, final checkpoints"]["per_seed"] == pytest.approx([1 - 40 / 55, 1 - 42 / 52])
    assert s["runs"][CE]["best val ppl"]["mean"] == pytest.approx(49.0)
    assert s["runs"][KD]["best val ppl"]["n"] == 2
    with pytest.raises(ValueError, match="CE"):
        summarize([_row(0, KD, 40.0, 40.0)])


def test_keep_best_keeps_the_weights_of_the_lowest_validation_loss():
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, 64, (4000,), generator=g)
    evalset = make_eval_set(stream[-600:], 32, 512)
    cfg = DistillConfig(steps=6, batch_size=4, seq_len=32, lr=0.3, warmup=1, eval_every=1)  # lr high: the loss jumps
    student = tiny_model("llama", vocab_size=64, seed=3)
    run = train_student(student, CorpusWindows(stream[:-600], 4, 32), cfg, evalset=evalset, progress=False,
                        keep_best=True)
    assert run.best["val_loss"] == min(r["val_loss"] for r in run.log)
    student.load_state_dict(run.best_state)
    assert evaluate(student, evalset)["val_loss"] == pytest.approx(run.best["val_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="evalset"):
        train_student(student, CorpusWindows(stream, 4, 32), cfg, progress=False, keep_best=True)


@pytest.mark.slow
def test_two_seeds_two_runs_in_worker_processes_give_the_rows_and_the_summary(tmp_path):
    # the GPU command's code path (spawned workers), on CPU at a tiny size
    path = record_seeds("cpu_seeds_test", profile="small", seeds=(0, 1), steps=2, device="cpu", workers=2,
                        test_tokens=512, directory=tmp_path, progress=False)
    rec = json.loads(path.read_text())
    assert [(r["seed"], r["run"]) for r in rec["rows"]] == [(0, CE), (0, KD), (1, CE), (1, KD)]
    for r in rec["rows"]:
        assert r["steps"] == 2 and r["best step"] in (0, 1, 2) and "log" not in r
        assert r["best val ppl"] <= r["final val ppl"] and r["test ppl (best)"] > 1
    assert rec["rows"][0]["best val ppl"] != rec["rows"][2]["best val ppl"]  # the seed changes the run
    s = rec["summary"]
    assert s["seeds"] == [0, 1] and len(s["gain"]["per_seed"]) == 2 and len(s["curves"]) == 4
    assert s["train"]["steps"] == 2 and s["workers"] == 2 and "--part seeds --seeds 0 1 --steps 2" in rec["command"]
    table = seed_table(s)
    assert [t["run"] for t in table] == list(SEED_RUNS)
