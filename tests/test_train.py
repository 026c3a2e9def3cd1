"""The training recipe: a smoke run of a few steps on CPU, deterministic given a seed."""

import dataclasses
import json

import pytest
import torch

from course_lib.pipeline import train
from course_lib.lm.models import load_model


def test_smoke_training_is_deterministic_and_learns(tmp_path):
    spec, cfg = train.SMOKE
    _, first = train.train(spec, cfg, "cpu", out_dir=tmp_path / "a", quiet=True)
    _, second = train.train(spec, cfg, "cpu", quiet=True)
    assert [r["val_loss"] for r in first.log] == [r["val_loss"] for r in second.log]
    assert first.log[-1]["val_loss"] < first.log[0]["val_loss"]
    assert first.best_val_loss == min(r["val_loss"] for r in first.log)
    other = dataclasses.replace(cfg, seed=1)
    _, third = train.train(spec, other, "cpu", quiet=True)
    assert [r["val_loss"] for r in third.log] != [r["val_loss"] for r in first.log]

    model, tok = load_model(str(tmp_path / "a"), device="cpu")  # the saved directory loads like any model
    assert model.config.num_hidden_layers == spec.layers and len(tok) == 4096
    record = json.loads((tmp_path / "a" / "training.json").read_text())
    assert record["spec"]["hidden"] == spec.hidden and len(record["log"]) == len(first.log)


def test_cli_smoke(tmp_path, capsys):
    assert train.main(["--smoke", "--out", str(tmp_path), "--device", "cpu", "--steps", "2"]) == 0
    assert "best validation loss" in capsys.readouterr().out


def test_shipped_dimensions_and_bad_specs():
    tok = __import__("course_lib.lm.models", fromlist=["load_tokenizer"]).load_tokenizer()
    from transformers import LlamaForCausalLM

    train.check_dims(LlamaForCausalLM(train.llama_config(train.ModelSpec(), tok)))
    with pytest.raises(ValueError, match="multiples of 128"):
        train.check_dims(LlamaForCausalLM(train.llama_config(train.ModelSpec(kv_heads=1), tok)))
    with pytest.raises(ValueError, match="divide"):
        train.llama_config(train.ModelSpec(heads=3), tok)


def test_schedule():
    cfg = train.TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert train.lr_at(0, cfg) == pytest.approx(0.1) and train.lr_at(9, cfg) == pytest.approx(1.0)
    assert train.lr_at(100, cfg) == pytest.approx(0.1)
    assert all(train.lr_at(s, cfg) >= train.lr_at(s + 1, cfg) for s in range(10, 99))
    assert torch.isfinite(torch.tensor(train.lr_at(55, cfg)))
