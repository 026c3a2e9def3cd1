"""course_lib.bnb.qlora and teach: configuration errors, the held-out split, a short QLoRA run, the 4-bit code fits."""

import pytest
import torch

from course_lib.bnb import qlora, teach
from course_lib.core.optional import have


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="method must be one of"):
        qlora.FinetuneConfig(method="dora")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        qlora.FinetuneConfig(optimizer="lion")
    with pytest.raises(ValueError, match="positive"):
        qlora.FinetuneConfig(steps=0)


def test_work_split_is_disjoint_and_named():
    from course_lib.lm import models

    tok = models.load_tokenizer()
    train, held = qlora.work_split(tok)
    assert len(train) > 5 * len(held) > 0
    with pytest.raises(ValueError, match="No work titled"):
        qlora.work_split(tok, "Hamlet", split="validation")


def test_paged_optimizer_needs_cuda():
    if not have("bitsandbytes"):
        pytest.skip("bitsandbytes is not installed")
    p = [torch.nn.Parameter(torch.zeros(4))]
    with pytest.raises(ValueError, match="adamw8bit"):
        qlora.make_optimizer(p, "paged_adamw8bit", 1e-3, "cpu")
    assert type(qlora.make_optimizer(p, "adamw8bit", 1e-3, "cpu")).__name__ == "AdamW8bit"
    assert isinstance(qlora.make_optimizer(p, "adamw", 1e-3, "cpu"), torch.optim.AdamW)


def test_nf4_fits_normal_weights_best():
    torch.manual_seed(0)
    rows = {r["code"]: r for r in teach.code_fit_rows([torch.randn(256, 256)])}
    assert rows["nf4"]["rms error / rms weight"] < min(rows["fp4"]["rms error / rms weight"],
                                                       rows["int4"]["rms error / rms weight"])
    assert rows["nf4"]["entropy bits"] > rows["int4"]["entropy bits"]
    assert rows["nf4"]["levels"] == 16 and rows["int4"]["levels"] == 15


def test_outlier_rows_on_a_tiny_model_with_a_planted_outlier():
    from course_lib.lm.models import tiny_model

    model = tiny_model("llama", vocab_size=256)
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    calm = {r["layer"]: r for r in teach.outlier_rows(model, ids, threshold=1e6)}
    assert all(r["columns in 16-bit"] == 0 and r["tokens with an outlier"] == 0 for r in calm.values())
    rows = {r["layer"]: r for r in teach.outlier_rows(model, ids, threshold=0.05)}
    assert rows["q_proj"]["columns in 16-bit"] > 0
    assert rows["q_proj"]["decomposed (median)"] <= rows["q_proj"]["int8 error (median)"]


@pytest.mark.slow
@pytest.mark.skipif(not have("bitsandbytes", "peft"), reason="needs bitsandbytes and peft")
def test_short_qlora_run_lowers_loss_and_merges():
    from course_lib.lm import models

    tok = models.load_tokenizer()
    train, held = qlora.work_split(tok)
    cfg = qlora.FinetuneConfig(steps=6, batch_size=2, seq_len=64, lr=2e-3)
    model = qlora.prepare(None, cfg)
    assert sum(p.requires_grad for p in model.parameters()) > 0
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    run = qlora.train(model, train, cfg, progress=False)
    assert len(run.losses) == 6 and run.trainable < 0.1 * run.total
    assert sum(run.losses[-2:]) < sum(run.losses[:2])
    rows = {r["model"]: r for r in qlora.merge_report(model, None, tok, held[:1024])}
    unmerged = rows["QLoRA, adapters unmerged"]["held-out ppl"]
    # 1e-3: on a CPU with AVX-512 BF16, bitsandbytes runs the unmerged 4-bit layers with its own repacked bf16 kernel
    assert abs(rows["merged into 16-bit copy of the 4-bit base"]["held-out ppl"] / unmerged - 1) < 1e-3
    assert rows["merged back into NF4"]["rounding / update"] > 0
