"""The bundled model's card (data/course-model/README.md) agrees with the files it describes."""

from __future__ import annotations

import json
import re

from course_lib.pipeline import model_card
from course_lib.lm.models import load_model

CARD = (model_card.MODEL_DIR / "README.md").read_text(encoding="utf-8")


def test_card_sha256_is_the_checkpoints():
    digest = model_card.sha256_file(model_card.MODEL_DIR / "model.safetensors")
    found = set(re.findall(r"\b[0-9a-f]{64}\b", CARD))
    assert found == {digest}, "model.safetensors changed: rerun python -m course_lib.pipeline.model_card and update the card"


def test_card_parameters_and_training_numbers():
    model, _ = load_model()
    params = sum(p.numel() for p in model.parameters())
    assert f"{params:,d}" in CARD
    run = json.loads((model_card.MODEL_DIR / "training.json").read_text())
    assert f"{run['tokens_seen']:,d} tokens seen" in CARD
    assert f"{run['best_val_loss']:.4f}" in CARD and f"{run['seconds']:.0f} s" in CARD


def test_retrain_command_reproduces_the_recorded_recipe():
    opts = dict(model_card.sweep_rounds()[2][1])[model_card.SHIPPED_RUN]
    assert model_card.options_match(opts, model_card.load_run(model_card.SHIPPED_RUN))
    assert not model_card.options_match(opts.replace("--steps 1000", "--steps 999"),
                                        model_card.load_run(model_card.SHIPPED_RUN))
    assert " ".join(opts.split()) in " ".join(CARD.replace("\\\n", " ").split())


def test_markdown_table_alignment():
    table = model_card.md_table(["a", "b"], [["x", "1,234"]])
    assert table.splitlines() == ["| a | b |", "|---|---:|", "| x | 1,234 |"]
