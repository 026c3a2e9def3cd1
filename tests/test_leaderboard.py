"""course_lib.eval leaderboard: every variant builder changes the weights (so no row scores the float model twice),
bytes measured are the files' bytes, bits per weight of known layouts, the Pareto front, the seed-claim verdicts,
the GPU join, and clear errors (unknown names, a missing library leaves a variant out, not a crash)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from course_lib.core.optional import have
from course_lib.eval import storage as st
from course_lib.eval import variants as V
from course_lib.eval.board import judge, leaderboard_table, pareto_front, seed_claims
from course_lib.eval.leaderboard import check_models, model_rows, recorded_gpu
from course_lib.eval.lmeval import fingerprint
from course_lib.lm.models import tiny_model
from course_lib.mixed.sensitivity import Setting

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_ctx(tmp_path_factory):
    """A tiny random Llama (float32, 2 blocks of 128 / 256 wide), saved so that bitsandbytes can load it."""
    tmp = tmp_path_factory.mktemp("leaderboard")
    model = tiny_model("llama")
    model.save_pretrained(tmp / "src")
    g = torch.Generator().manual_seed(0)
    return V.Context(name="tiny", model=model, tokenizer=None, calibration=torch.randint(0, 4096, (4, 64), generator=g),
                     workdir=tmp / "work", group_size=128, symmetric=True, source=str(tmp / "src"),
                     mixed_settings=(Setting(2, 128), Setting(4, 128), Setting(8, 128)),
                     kl_tokens=torch.randint(0, 4096, (1, 32), generator=g), measure_cache=tmp / "measure")


def _buildable(ctx) -> list[str]:
    names = [n for n in V.variant_names("tiny") if n not in ("float32", "distilled student")]
    return [n for n in names if have(*V.SPEC[n].needs)]


def test_every_builder_changes_the_weights_and_measures_its_files(tiny_ctx):
    float_fp = fingerprint(tiny_ctx.model)
    seen = {float_fp: "float32"}
    for name in _buildable(tiny_ctx):
        built = V.build(name, tiny_ctx)
        fp = fingerprint(built.model)
        # a variant with the float model's weights (or another variant's) would be a row scored twice
        assert fp not in seen, f"{name} has the weights of {seen.get(fp)}"
        seen[fp] = name
        s = built.storage
        assert s.how in ("measured", "computed") and 0 < s.linear_bytes < s.bytes
        assert s.linear_weights == 2 * (2 * 128 * 128 + 2 * 64 * 128 + 3 * 256 * 128)  # 2 blocks; k, v 64 wide
        if s.how == "measured":  # exactly the bytes of the weight files in the directory the writer wrote
            on_disk = [p for p in Path(s.directory).iterdir() if p.suffix in (".safetensors", ".gguf")]
            assert s.bytes == sum(p.stat().st_size for p in on_disk) and sorted(s.files) == sorted(
                p.name for p in on_disk)
        with torch.no_grad():   # and it still runs
            assert torch.isfinite(built.model(tiny_ctx.calibration[:1, :16]).logits).all()
    assert fingerprint(tiny_ctx.model) == float_fp  # the builders left the float model alone
    assert len(seen) == len(_buildable(tiny_ctx)) + 1


def test_bits_per_weight_of_known_layouts(tiny_ctx):
    # 4-bit codes, one fp16 scale and one fp16 zero per group of 128: 4 + 32 / 128 bits per weight
    assert 8 * st.group_layout(4, 128)(4096, 4096) / 4096 ** 2 == pytest.approx(4.25)
    # GPTQ v1: 4-bit zeros packed, fp16 scales, an int32 g_idx per input
    assert 8 * st.gptq_layout(4, 128)(4096, 4096) / 4096 ** 2 == pytest.approx(4 + 20 / 128 + 32 / 4096)
    assert 8 * st.sparse24_layout(256, 512) / (256 * 512) == 9.0
    assert 8 * st.w8a8_layout(256, 512) / (256 * 512) == pytest.approx(8 + 16 / 512)
    with pytest.raises(ValueError, match="does not divide"):
        st.group_layout(4, 128)(64, 96)
    # the computed GPTQ layout is what save_gptq_checkpoint writes (2, 4, 8 bits), the 3-bit row is computed
    for bits in (2, 4):
        built = V.build(f"GPTQ {bits}-bit", tiny_ctx)
        assert built.storage.how == "measured"
        assert built.storage.linear_bytes == st.computed(built.model, st.gptq_layout(bits, 128), "x").linear_bytes
    assert V.build("GPTQ 3-bit", tiny_ctx).storage.how == "computed"
    ref = V.build("bf16", tiny_ctx).storage
    assert ref.bpw == 16.0 and ref.how == "measured"


def _row(model, variant, nbytes, ppl, **kw):
    return {"model": model, "variant": variant, "family": "rtn", "bytes": nbytes, "ppl": ppl, **kw}


def test_pareto_front_on_hand_made_rows():
    rows = [_row("a", "big good", 100, 10.0), _row("a", "small bad", 10, 50.0), _row("a", "dominated", 50, 60.0),
            _row("a", "tie 1", 40, 20.0), _row("a", "tie 2", 40, 20.0), _row("a", "same size worse", 40, 21.0),
            _row("a", "same ppl bigger", 120, 10.0), _row("a", "no ppl", 5, None),
            _row("b", "only", 1, 1.0)]
    front = pareto_front(rows)
    assert [r["variant"] for r in front["a"]] == ["small bad", "tie 1", "tie 2", "big good"]
    assert [r["variant"] for r in front["b"]] == ["only"]
    student = _row("a", "student", 5, 9.0, family="distill")   # smaller and better: it alone is the front
    assert [r["variant"] for r in pareto_front(rows + [student])["a"]] == ["student"]
    assert pareto_front(rows + [student], exclude=("distill",))["a"] == front["a"]
    assert [r["variant"] for r in pareto_front(rows, x="ppl", y="bytes")["a"]] == ["big good", "tie 1", "tie 2",
                                                                                  "small bad"]


def test_seed_claim_verdicts_on_hand_made_rows():
    def r(variant, change, lo, hi, model="m"):
        return _row(model, variant, 1, 1.0, change=change, change_lo=lo, change_hi=hi, settings="-")

    rows = [r("RTN 8-bit", 0.002, -0.001, 0.005), r("GPTQ 8-bit", 0.008, 0.004, 0.012),
            r("RTN 4-bit", 0.02, 0.012, 0.028), r("GPTQ 4-bit", 0.004, 0.001, 0.008),
            r("RTN 3-bit", 0.2, 0.1, 0.3), r("RTN 2-bit", 1.5, 1.2, 1.9), r("GPTQ 2-bit", 0.6, 0.4, 0.9),
            r("AWQ 4-bit", 0.0, 0.0, 0.0)]
    got = {(c["variant"]): c["verdict"] for c in seed_claims(rows)}
    assert got == {"RTN 8-bit": "holds", "GPTQ 8-bit": "undecided (interval crosses a bound)",
                   "RTN 4-bit": "holds", "GPTQ 4-bit": "fails: smaller loss", "RTN 3-bit": "no claim",
                   "RTN 2-bit": "holds", "GPTQ 2-bit": "fails: smaller loss"}
    assert judge(0.05, 0.06, 0.01, 0.03) == "fails: larger loss"
    strict = {2: ("INT2: unusable (ppl +30% or more)", 0.3, None)}
    assert [c["verdict"] for c in seed_claims(rows, claims=strict)] == ["holds", "holds"]
    assert judge(-1, 1, None, None) == "no claim"


def test_unknown_names_and_missing_libraries(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="Unknown variant 'GPTQ 5-bit'.*GPTQ 4-bit"):
        V.check_names(["GPTQ 5-bit"])
    with pytest.raises(ValueError, match="Unknown model 'llama-7b'.*course-model, smollm2-135m"):
        check_models(["llama-7b"])
    assert V.left_out_reason("distilled student", "smollm2-135m").startswith("applies to course-model only")
    assert V.left_out_reason("GPTQ 4-bit", "course-model", chapters_dir=tmp_path) == "chapter 03 does not exist yet"
    import course_lib.core.optional as optional

    real = optional.missing
    monkeypatch.setattr(optional, "missing", lambda *m: [x for x in real(*m) if x != "bitsandbytes"] +
                        (["bitsandbytes"] if "bitsandbytes" in m else []))
    assert V.left_out_reason("bnb nf4", "course-model") == "bitsandbytes not installed"
    # a whole (quick) run: the missing library leaves its variant out, with the reason, and the rest is scored
    rows, summary = model_rows("course-model", quick=True, names=["float32", "RTN 4-bit", "bnb int8"], log=lambda m: 0)
    assert [r["variant"] for r in rows] == ["float32", "RTN 4-bit"]
    assert summary["left_out"] == [{"variant": "bnb int8", "reason": "bitsandbytes not installed"}]
    ref, rtn = rows
    assert ref["verdict"] == "reference" and ref["change"] == 0 and rtn["fingerprint"] != ref["fingerprint"]
    assert rtn["ppl_lo"] < rtn["ppl"] < rtn["ppl_hi"] and rtn["change_lo"] <= rtn["change"] <= rtn["change_hi"]
    assert rtn["bytes_how"] == "computed" and 4 + 20 / 128 < rtn["bpw"] < 4 + 20 / 128 + 32 / 128  # + g_idx
    assert math.isfinite(rtn["acc_mutual_info_stderr"]) and rtn["ms_per_token"] >= rtn["ms_fastest"] > 0
    assert rtn["simulated"] and rtn["time_vs_float"] > 0 and ref["time_vs_float"] == 1.0
    assert len(rtn["window_nll"]) == summary["windows"] == 8
    table = leaderboard_table(rows)
    assert table[1]["variant"] == "RTN 4-bit" and "[" in table[1]["ppl [95%]"]


def test_gpu_numbers_join_only_exact_matches():
    rtn = recorded_gpu("smollm2-135m", "RTN 4-bit", None)          # data-free: any calibration matches
    assert rtn["gpu_source"].startswith("h200_smollm2") and rtn["gpu_ppl"] > 0
    assert recorded_gpu("smollm2-135m", "GPTQ 4-bit", "32 x 128") == {}   # calibrated on other windows
    assert recorded_gpu("smollm2-135m", "GPTQ 4-bit", "128 x 256")["gpu_ppl"] > 0
    assert recorded_gpu("course-model", "bnb int8", None)["gpu_ms_per_token"] > 0
    assert recorded_gpu("course-model", "GPTQ 2-bit", "128 x 256") == {}


def test_plot_draws_every_variant_and_the_front():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_lib.eval.board import plot_leaderboard

    rows = [_row("a", "float32", 100, 10.0, family="reference"), _row("a", "RTN 4-bit", 30, 11.0),
            _row("a", "RTN 2-bit", 20, 40.0), _row("a", "pruned", 60, 12.0, family="prune"),
            _row("b", "float32", 500, 5.0, family="reference")]
    fig, axes = plot_leaderboard(rows)
    assert len(axes) == 2 and axes[0].get_xscale() == "log" and axes[0].get_title() == "a"
    front = axes[0].lines[0]   # the step line through the front, sizes in MB
    assert list(front.get_xdata()) == [20e-6, 30e-6, 100e-6]
    assert sum(len(c.get_offsets()) for c in axes[0].collections) == 4
    # RTN 2-bit (40) is above twice the float perplexity: drawn on the top edge and named there
    assert axes[0].get_ylim()[1] == 20.0 and max(max(c.get_offsets()[:, 1]) for c in axes[0].collections) == 20.0
    above = [[t.get_text() for t in ax.texts if t.get_text().startswith("above")] for ax in axes]
    assert above == [["above the axis: RTN 2-bit (40)"], []]
    plt.close(fig)
    fig, axes = plot_leaderboard(rows, y_clip=None)   # everything on a log axis
    assert axes[0].get_yscale() == "log" and not any(t.get_text().startswith("above") for t in axes[0].texts)
    plt.close(fig)


def test_record_in_parts_keeps_every_row_and_saves_after_each_variant(monkeypatch, tmp_path):
    import course_lib.core.results as results
    from course_lib.eval import leaderboard as lb

    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    saved = []
    real_save = results.save_result
    monkeypatch.setattr(results, "save_result", lambda *a, **k: saved.append(
        (len(a[1]), k["summary"]["models"]["course-model"].get("partial"))) or real_save(*a, **k))
    lb.record_leaderboard("lb_parts", models=["course-model"], quick=True, variants=["float32", "RTN 4-bit"])
    # one save after each variant (partial), one at the end
    assert saved == [(1, True), (2, True), (2, None)]
    first = results.load_result("lb_parts", tmp_path)
    lb.record_leaderboard("lb_parts", models=["course-model"], quick=True, variants=["RTN 8-bit"])
    rec = results.load_result("lb_parts", tmp_path)
    # the second part's row joins the first part's, in table order; the earlier rows are untouched
    assert [r["variant"] for r in rec.rows] == ["float32", "RTN 8-bit", "RTN 4-bit"]
    assert rec.rows[0] == first.rows[0] and rec.rows[2] == first.rows[1]
    info = rec.summary["models"]["course-model"]
    assert info["variants_run"] == ["float32", "RTN 8-bit", "RTN 4-bit"]
    assert "partial" not in info and info["seconds"] > first.summary["models"]["course-model"]["seconds"]
    assert rec.command.endswith("--models course-model --quick --name lb_parts")
    with pytest.raises(ValueError, match="Unknown variant 'RTN 5-bit'"):
        lb.record_leaderboard("lb_parts", models=["course-model"], variants=["RTN 5-bit"])
