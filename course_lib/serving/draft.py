"""The speculative-decoding draft for the bundled model: chapter 08's student, distilled for longer.

``data/draft-model`` holds it (2.2M parameters, bf16, the bundled model's tokenizer). It was made with

    python -m course_lib.serving.draft --steps 4000 --name h200_draft_training   # on a GPU; 144 s on an H200

which trains ``distill.student.new_student`` by logit KD from the bundled model on the training split
(alpha 0.1 on the hard labels, temperature 1, 4000 steps of 64 x 256 tokens) and keeps the checkpoint
with the lowest validation loss. The log is in data/results/h200_draft_training.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from ..core.env import REPO_ROOT
from ..lm.errors import ModelUnavailableError

DRAFT_DIR = REPO_ROOT / "data" / "draft-model"


def load_draft(device=None, dtype=torch.float32):
    """The draft model, in eval mode."""
    from transformers import AutoModelForCausalLM

    if not (DRAFT_DIR / "model.safetensors").exists():
        raise ModelUnavailableError(f"The draft model is missing from {DRAFT_DIR}; restore data/ from the repository "
                                    "or train it with `python -m course_lib.serving.draft` on a GPU.")
    model = AutoModelForCausalLM.from_pretrained(DRAFT_DIR, dtype=dtype).eval()
    return model.to(device) if device is not None else model


def train_draft(steps: int = 4000, device: str = "cuda", out=DRAFT_DIR) -> dict:
    """Distil the draft from the bundled model and save it (bf16) with its tokenizer; returns the log."""
    from ..distill.student import new_student
    from ..distill.trainer import CorpusWindows, DistillConfig, make_eval_set, train_student
    from ..lm.models import load_model
    from ..lm.tokens import token_stream

    dev = torch.device(device)
    teacher, tok = load_model(device=dev, dtype=torch.float32)
    cfg = DistillConfig(steps=steps, batch_size=64, seq_len=256, lr=2e-3, warmup=200, eval_every=500,
                        temperature=1.0, alpha=0.1)
    evalset = make_eval_set(token_stream("validation", tok), cfg.seq_len, 65536, teacher)
    student = new_student(tok, seed=0, device=dev)
    start = time.time()
    run = train_student(student, CorpusWindows(token_stream("train", tok), cfg.batch_size, cfg.seq_len), cfg,
                        teacher=teacher, evalset=evalset, name="draft", progress=False, keep_best=True)
    student.load_state_dict(run.best_state)
    student.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return {"config": run.config, "log": run.log, "seconds": time.time() - start, "best": run.best}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.serving.draft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=str(DRAFT_DIR))
    parser.add_argument("--name", default=None, help="record the training log as data/results/<name>.json "
                        "(e.g. h200_draft_training)")
    args = parser.parse_args(argv)
    log = train_draft(args.steps, args.device, args.out)
    if args.name:
        from ..core.results import save_result

        save_result(args.name, log["log"], command=f"python -m course_lib.serving.draft --steps {args.steps}",
                    description="Chapter 13's speculative-decoding draft: chapter 08's student distilled from the "
                                "bundled model by logit KD; rows: the evaluation log.",
                    summary={"best": log["best"], "config": log["config"], "seconds": log["seconds"]})
    print(log["best"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
