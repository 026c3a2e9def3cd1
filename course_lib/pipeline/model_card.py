"""Every number of the bundled model's card (data/course-model/README.md), and its loss-curve figure.

    python -m course_lib.pipeline.model_card                    # all numbers + data/course-model/loss_curves.png
    python -m course_lib.pipeline.model_card --skip-perplexity  # without the few minutes of CPU scoring

It prints Markdown-ready lines and tables: architecture and parameter counts, file size and sha256,
the training recipe and its log, the sweep, perplexities next to the n-gram baselines, and three
sample generations. The card's prose is written by hand around these numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
from pathlib import Path

from .corpus_prepare import sha256_file
from ..core.env import REPO_ROOT

MODEL_DIR = REPO_ROOT / "data" / "course-model"
SWEEP_DIR = REPO_ROOT / "tools" / "sweeps"
SHIPPED_RUN = "d256-l8-s1000-drop2"  # the line of tools/sweeps/round3.txt that was shipped
OVERFIT_RUN = "d256-l8"  # round 1's 4000-step run, shown for its overfitting
FIGURE = MODEL_DIR / "loss_curves.png"
# training.json records only "cuda"; the machine is the course's H100 (see data/results/h100_roofline.json).
TRAINED_ON = "one NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, bf16 autocast"
PROMPTS = ("ROMEO:", "Of Man's first disobedience", "To be, or not to be")
SAMPLING = {"new_tokens": 80, "temperature": 0.8, "top_k": 50, "seed": 0}


def load_run(name: str) -> dict:
    """A sweep run's training.json (the shipped run's is the model's own)."""
    path = MODEL_DIR / "training.json" if name == SHIPPED_RUN else SWEEP_DIR / "logs" / f"{name}.json"
    return json.loads(path.read_text())


def sweep_rounds() -> list[tuple[str, list[tuple[str, str]]]]:
    """[(round comment, [(run name, options), ...]), ...] from tools/sweeps/round{1,2,3}.txt."""
    rounds = []
    for i in (1, 2, 3):
        lines = (SWEEP_DIR / f"round{i}.txt").read_text().splitlines()
        comment = " ".join(line.lstrip("# ") for line in lines if line.startswith("#"))
        runs = [tuple(line.split(maxsplit=1)) for line in lines if line.strip() and not line.startswith("#")]
        rounds.append((comment, runs))
    return rounds


def md_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; numbers right-aligned."""
    align = ["---:" if re.fullmatch(r"[*`]*[\d.,]+[M%]?[*`]*", str(v)) else "---" for v in rows[0]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------

COMPONENTS = (  # (label, substring of the parameter name)
    ("token embedding", "embed_tokens"),
    ("attention q_proj", "q_proj"), ("attention k_proj", "k_proj"),
    ("attention v_proj", "v_proj"), ("attention o_proj", "o_proj"),
    ("MLP gate_proj", "gate_proj"), ("MLP up_proj", "up_proj"), ("MLP down_proj", "down_proj"),
    ("RMSNorm weights", "norm"),
    ("output head (lm_head, untied)", "lm_head"),
)


def parameter_breakdown(model) -> list[tuple[str, int, str]]:
    """(component, parameters, shape of one instance) for every component, all layers together."""
    rows = []
    for label, key in COMPONENTS:
        params = [(n, p) for n, p in model.named_parameters() if key in n]
        shape = " x ".join(str(d) for d in params[0][1].shape)
        rows.append((label, sum(p.numel() for _, p in params), f"{len(params)} x ({shape})"))
    assert sum(r[1] for r in rows) == sum(p.numel() for p in model.parameters()), "a parameter is uncounted"
    return rows


def print_architecture(model) -> None:
    from ..lm.models import linear_layers, summarize

    s = summarize(model)
    c = model.config
    print(f"architecture: {s.architecture}, {s.layers} layers, hidden {s.hidden}, {s.heads} query heads / "
          f"{s.kv_heads} KV heads of dim {c.head_dim}, SwiGLU intermediate {c.intermediate_size}, "
          f"vocab {s.vocab}, {s.max_positions} positions, RoPE theta {c.rope_parameters['rope_theta']}, "
          f"RMSNorm eps {c.rms_norm_eps}, tied embeddings: {c.tie_word_embeddings}")
    print(f"parameters: {s.parameters:,d} total")
    print(md_table(["component", "parameters", "share", "tensors"],
                   [[a, f"{b:,d}", f"{b / s.parameters:.1%}", t] for a, b, t in parameter_breakdown(model)]))
    shapes = sorted({(name.split(".")[-1], m.in_features, m.out_features) for name, m in linear_layers(model).items()})
    shapes.append(("lm_head", model.lm_head.in_features, model.lm_head.out_features))
    print("linear layers (in -> out): " + ", ".join(f"{n} {i}->{o}" for n, i, o in shapes))
    print(f"all multiples of 128: {all(i % 128 == 0 and o % 128 == 0 for _, i, o in shapes)}")
    path = MODEL_DIR / "model.safetensors"
    size = path.stat().st_size
    print(f"model.safetensors: {size:,d} bytes ({size / 1e6:.1f} MB, bf16: 2 x {s.parameters:,d} = "
          f"{2 * s.parameters:,d} bytes of weights + {size - 2 * s.parameters:,d} bytes of header)")
    print(f"sha256(model.safetensors) = {sha256_file(path)}")


# --------------------------------------------------------------------------------------------
# Training and the sweep
# --------------------------------------------------------------------------------------------


def print_training(train_tokens: int) -> None:
    run = load_run(SHIPPED_RUN)
    print(f"trained on: {TRAINED_ON}; device recorded: {run['device']}")
    print(f"recipe (training.json): spec {run['spec']}")
    print(f"                        train {run['train']}")
    t = run["train"]
    print(f"tokens per step: {t['batch_size']} x {t['seq_len']} = {t['batch_size'] * t['seq_len']:,d}; "
          f"best step {run['best_step']} of {t['steps']}; tokens seen {run['tokens_seen']:,d} = "
          f"{run['tokens_seen'] / train_tokens:.1f} epochs of the {train_tokens:,d}-token train stream")
    print(f"best validation loss {run['best_val_loss']:.4f} (ppl {math.exp(run['best_val_loss']):.2f}); "
          f"wall time {run['seconds']:.0f} s")
    opts = dict(sweep_rounds()[2][1])[SHIPPED_RUN]
    print(f"retrain: python -m course_lib.pipeline.train --out DIR {opts}")
    print(f"those options reproduce training.json's recipe: {options_match(opts, run)}")
    overfit = load_run(OVERFIT_RUN)
    best = min(overfit["log"], key=lambda r: r["val_loss"])
    last = overfit["log"][-1]
    print(f"{OVERFIT_RUN}: best val loss {best['val_loss']:.4f} at step {best['step']} "
          f"({best['tokens'] / train_tokens:.1f} epochs); at step {last['step']} "
          f"({last['tokens'] / train_tokens:.1f} epochs) train {last['train_loss']:.3f}, val {last['val_loss']:.3f}")


def options_match(opts: str, run: dict) -> bool:
    """Do the command-line options, over train.py's defaults, give the run's recorded recipe?"""
    from dataclasses import asdict

    from .train import ModelSpec, TrainConfig

    words = shlex.split(opts)
    given = {words[i][2:].replace("-", "_"): words[i + 1] for i in range(0, len(words), 2)}
    spec, cfg = asdict(ModelSpec()), asdict(TrainConfig())
    for key, value in given.items():
        target = spec if key in spec else cfg
        target[key] = type(target[key])(value)
    return spec == run["spec"] and cfg == run["train"]


def print_sweep() -> None:
    summary, full = [], []
    for i, (comment, runs) in enumerate(sweep_rounds(), start=1):
        results = sorted(((load_run(name), name) for name, _ in runs), key=lambda rn: rn[0]["best_val_loss"])
        best, name = results[0]
        summary.append([i, len(runs), name, f"{best['best_val_loss']:.4f}", f"{math.exp(best['best_val_loss']):.2f}"])
        print(comment)
        for r, n in results:
            s, t = r["spec"], r["train"]
            full.append([i, n, f"{r['params'] / 1e6:.2f}M", t["steps"], t["batch_size"], t["lr"],
                         s["attention_dropout"], t["weight_decay"], f"{r['best_step']}",
                         f"{r['best_val_loss']:.4f}", f"{math.exp(r['best_val_loss']):.2f}", f"{r['seconds']:.0f}"])
    print(md_table(["round", "runs", "best run", "best val loss", "val ppl"], summary))
    print(md_table(["round", "run", "params", "steps", "batch", "lr", "attn dropout", "weight decay",
                    "best step", "best val loss", "val ppl", "s"], full))


def plot_loss_curves(train_tokens: int, path: Path = FIGURE) -> None:
    """Train and validation loss vs tokens seen: the shipped run and the overfitting 4000-step run.

    Left: the whole of both runs; right: the same curves, zoomed on the shipped run's range.
    """
    from ..core.plotting import PALETTE, new_axes

    fig, axes = new_axes(ncols=2, figsize=(11.0, 4.2))
    runs = ((SHIPPED_RUN, PALETTE[0], f"shipped ({SHIPPED_RUN})"), (OVERFIT_RUN, PALETTE[3], f"{OVERFIT_RUN}, round 1"))
    for ax in axes:
        for name, color, label in runs:
            log = load_run(name)["log"]
            rows = [r for r in log if r["train_loss"] is not None]  # train loss: mean since the previous evaluation
            ax.plot([r["tokens"] / 1e6 for r in rows], [r["train_loss"] for r in rows], color=color, ls="--",
                    lw=1.5, label=f"{label}: train")
            ax.plot([r["tokens"] / 1e6 for r in log], [r["val_loss"] for r in log], color=color,
                    label=f"{label}: validation")
            best = min(log, key=lambda r: r["val_loss"])
            ax.plot(best["tokens"] / 1e6, best["val_loss"], "o", color=color)
        top = ax.secondary_xaxis("top", functions=(lambda m: m * 1e6 / train_tokens, lambda e: e * train_tokens / 1e6))
        top.set_xlabel("epochs of the train split")
        ax.set(xlabel="tokens seen (millions)", ylabel="loss (nats per token)")
    axes[0].set(xlim=(0, None), ylim=(0, 8.5))
    axes[0].legend(loc="lower left", fontsize=8)
    axes[1].set(xlim=(0, 20), ylim=(3.0, 5.0))
    axes[1].text(0.98, 0.95, "zoom; dots: best validation loss", transform=axes[1].transAxes, ha="right", va="top",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    print(f"wrote {path.relative_to(REPO_ROOT)} ({path.stat().st_size:,d} bytes)")


# --------------------------------------------------------------------------------------------
# Evaluation and samples
# --------------------------------------------------------------------------------------------


def print_perplexities(model, tokenizer) -> None:
    from .baselines import LAMBDA_GRID, fit, ngram_perplexity
    from ..lm.perplexity import FAST, FULL, FULL_VALIDATION, perplexity

    rows = []
    for label, protocol in (("FULL_VALIDATION", FULL_VALIDATION), ("FULL", FULL), ("FAST", FAST)):
        ours = perplexity(model, tokenizer, protocol)
        uni, bi = (ngram_perplexity(order, protocol, tokenizer) for order in (1, 2))
        assert ours.tokens == uni.tokens == bi.tokens
        size = "all" if protocol.max_tokens is None else f"first {protocol.max_tokens:,d}"
        rows.append([f"`{label}`", protocol.split, f"{size} tokens", protocol.seq_len, protocol.stride,
                     f"{ours.tokens:,d}", f"{uni.ppl:.1f}", f"{bi.ppl:.1f}", f"**{ours.ppl:.2f}**"])
    print(md_table(["protocol", "split", "stream", "seq len", "stride", "tokens scored", "unigram", "bigram",
                    "course model"], rows))
    print(f"bigram interpolation weight chosen on validation: lambda = {fit(2, tokenizer).lam} "
          f"(grid {LAMBDA_GRID[0]} .. {LAMBDA_GRID[-1]}); unigram add-k with k = {fit(1, tokenizer).k}")


def print_lm_eval(model, tokenizer) -> None:
    """The two local lm-eval tasks (course_lib.lm.eval_tasks), whole, next to chance."""
    from ..lm.eval_tasks import CHANCE, evaluate, load_docs, NEXTLINE_TASK, PPL_TASK

    scores = evaluate(model, tokenizer)
    print(f"{PPL_TASK} ({len(load_docs(PPL_TASK))} passages): word perplexity {scores['word_perplexity']:.1f}, "
          f"byte perplexity {scores['byte_perplexity']:.3f}, bits per byte {scores['bits_per_byte']:.3f}")
    items = len(load_docs(NEXTLINE_TASK))
    rows = [[f"`{m}`", f"{scores[m]:.3f}", f"{CHANCE[m]:.3f}",
             f"{(scores[m] - CHANCE[m]) / math.sqrt(CHANCE[m] * (1 - CHANCE[m]) / items):.1f}"]
            for m in ("acc", "acc_norm", "acc_mutual_info")]
    print(md_table(["metric", f"course model ({items} items)", "chance", "standard errors above chance"], rows))


def sample(model, tokenizer, prompt: str, new_tokens: int, temperature: float, top_k: int, seed: int) -> str:
    """Top-k sampling with temperature: p ~ softmax(logits / T) over the k likeliest tokens."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(input_ids=ids[:, -model.config.max_position_embeddings:]).logits[0, -1].float()
            top = torch.topk(logits / temperature, top_k)
            choice = torch.multinomial(torch.softmax(top.values, dim=-1), 1, generator=gen)
            ids = torch.cat([ids, top.indices[choice].view(1, 1)], dim=1)
    return tokenizer.decode(ids[0])


def print_samples(model, tokenizer) -> None:
    import torch

    from ..lm.corpus import load_split

    train_text = load_split("train")
    print(f"samples: {SAMPLING} (seed reset per prompt), CPU float32, torch {torch.__version__}")
    for prompt in PROMPTS:
        text = sample(model, tokenizer, prompt, **SAMPLING)
        lines = [line.strip() for line in text.removeprefix(prompt).split("\n") if len(line.strip()) >= 20]
        copied = sum(line in train_text for line in lines)
        print(f"--- prompt {prompt!r}: {copied} of {len(lines)} generated lines (20+ characters) occur verbatim in train")
        print(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.pipeline.model_card", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-perplexity", action="store_true", help="skip the perplexities, baselines and lm-eval tasks")
    parser.add_argument("--figure", type=Path, default=FIGURE, help="where to write the loss curves")
    args = parser.parse_args(argv)

    import torch

    from ..lm.models import load_model
    from ..lm.tokens import token_stream

    model, tokenizer = load_model(device="cpu")  # float32 on CPU
    train = token_stream("train", tokenizer)
    unseen = int((torch.bincount(train, minlength=len(tokenizer))[token_stream("test", tokenizer)] == 0).sum())
    train_tokens = len(train)
    print(f"train stream: {train_tokens:,d} tokens; test tokens never seen in train: {unseen}")
    for title, step in (("architecture", lambda: print_architecture(model)),
                        ("training", lambda: print_training(train_tokens)),
                        ("sweep", print_sweep),
                        ("figure", lambda: plot_loss_curves(train_tokens, args.figure)),
                        ("perplexity", None if args.skip_perplexity else lambda: print_perplexities(model, tokenizer)),
                        ("lm-eval", None if args.skip_perplexity else lambda: print_lm_eval(model, tokenizer)),
                        ("samples", lambda: print_samples(model, tokenizer))):
        if step is not None:
            print(f"\n## {title}")
            step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
