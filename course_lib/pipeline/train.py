"""The training recipe of the bundled course model: a small Llama trained on the course corpus.

    python -m course_lib.pipeline.train --out runs/base --steps 4000            # train one model
    python -m course_lib.pipeline.train --smoke --out /tmp/smoke                 # a few steps on CPU (CI)

The architecture is transformers' ``LlamaForCausalLM`` (RMSNorm, RoPE, SwiGLU, grouped-query
attention), sized so that every linear layer's input and output are multiples of 128: group-128
quantization and int4 packing then apply to q, k, v, o, gate, up and down alike.

Training samples random windows from the train split (documents joined by ``<|endoftext|>``),
uses AdamW with linear warm-up and cosine decay, bf16 autocast on CUDA and fp32 on CPU, evaluates
the validation loss every ``eval_every`` steps and keeps the best weights (early stopping: the
corpus has about 1.9M tokens, so a long run overfits). Given a seed it is deterministic on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.env import REPO_ROOT, choose_device, seed_everything
from ..lm.recipe import ModelSpec, TrainConfig, adamw, autocast, check_dims, evaluate_loss, llama_config, lr_at
from ..lm.tokens import random_windows, token_stream

TOKENIZER_DIR = REPO_ROOT / "data" / "course-model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


SMOKE = (ModelSpec(hidden=128, layers=2, heads=2, kv_heads=1, intermediate=256, max_positions=64, linear_multiple=0),
         TrainConfig(steps=4, batch_size=2, seq_len=32, warmup=2, eval_every=2, eval_tokens=256))


@dataclass
class TrainResult:
    best_step: int
    best_val_loss: float
    params: int
    tokens_seen: int
    seconds: float
    device: str
    log: list[dict] = field(default_factory=list)


def train(spec: ModelSpec, cfg: TrainConfig, device=None, *, out_dir: Path | None = None,
          tokenizer_dir: Path = TOKENIZER_DIR, quiet: bool = False) -> tuple[object, TrainResult]:
    """Train a model; returns (model with the best validation weights, TrainResult)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    device = choose_device(device) if not isinstance(device, torch.device) else device
    seed_everything(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    train_ids, val_ids = token_stream("train", tokenizer), token_stream("validation", tokenizer)
    model = LlamaForCausalLM(llama_config(spec, tokenizer)).to(device)
    if spec.linear_multiple:
        check_dims(model, spec.linear_multiple)
    params = sum(p.numel() for p in model.parameters())
    opt = adamw(model.parameters(), cfg.lr, cfg.weight_decay, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(cfg.seed)
    log: list[dict] = []
    best = (math.inf, -1, None)
    start = time.perf_counter()
    model.train()
    running, count = torch.zeros((), device=device), 0  # train loss summed since the last evaluation
    for step in range(cfg.steps + 1):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val = evaluate_loss(model, val_ids, cfg.seq_len, cfg.eval_tokens)
            train_loss = (running / count).item() if count else None
            running, count = torch.zeros((), device=device), 0
            row = {"step": step, "tokens": step * cfg.batch_size * cfg.seq_len, "train_loss": train_loss,
                   "val_loss": val, "lr": lr_at(min(step, cfg.steps - 1), cfg), "seconds": time.perf_counter() - start}
            log.append(row)
            if not quiet:
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            if val < best[0]:
                best = (val, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if step == cfg.steps:
            break
        # train_ids[:-1]: window starts in 0 .. len - seq_len - 2, the draw the shipped model was trained with
        batch = random_windows(train_ids[:-1], cfg.batch_size, cfg.seq_len, gen).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast(device):
            loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running, count = running + loss.detach().float(), count + 1
    model.load_state_dict(best[2])
    result = TrainResult(best_step=best[1], best_val_loss=best[0], params=params,
                         tokens_seen=best[1] * cfg.batch_size * cfg.seq_len,
                         seconds=time.perf_counter() - start, device=str(device), log=log)
    if out_dir is not None:
        save(model, tokenizer_dir, out_dir, spec, cfg, result)
    return model, result


def save(model, tokenizer_dir: Path, out_dir: Path, spec: ModelSpec, cfg: TrainConfig, result: TrainResult) -> None:
    """Save the model in bf16 safetensors with its tokenizer, recipe and training log."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        src = Path(tokenizer_dir) / name
        if src.exists() and src.resolve() != (out_dir / name).resolve():
            shutil.copy(src, out_dir / name)
    record = {"spec": asdict(spec), "train": asdict(cfg), **{k: v for k, v in asdict(result).items() if k != "log"}}
    (out_dir / "training.json").write_text(json.dumps({**record, "log": result.log}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.pipeline.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for the trained model")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    parser.add_argument("--smoke", action="store_true", help="a tiny model for a few steps (CI)")
    for f in ModelSpec.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    for f in TrainConfig.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    args = vars(parser.parse_args(argv))
    spec, cfg = SMOKE if args["smoke"] else (ModelSpec(), TrainConfig())
    spec = ModelSpec(**{**asdict(spec), **{k: args[k] for k in asdict(spec) if args[k] is not None}})
    cfg = TrainConfig(**{**asdict(cfg), **{k: args[k] for k in asdict(cfg) if args[k] is not None}})
    _, result = train(spec, cfg, args["device"], out_dir=args["out"])
    print(f"best validation loss {result.best_val_loss:.4f} (ppl {math.exp(result.best_val_loss):.2f}) at step "
          f"{result.best_step}; {result.params / 1e6:.2f}M parameters; {result.seconds:.0f} s on {result.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
