"""Chapter 02's QAT against its control over several learning rates, recorded on CPU.

    python -m course_lib.bench qat-control [--lrs 5e-4 1e-4 3e-5 1e-5] [--threads 1] [--name cpu_qat_control]

The control fine-tunes the same steps on the same windows as QAT, without fake quantization, then
applies RTN: if it did as well as QAT, QAT's gain would be "more training". A control whose learning
rate harms the float model proves nothing, so each learning rate records the control's float
perplexity next to its perplexity after RTN, and QAT's perplexity at the same learning rate. The
settings are the notebook's (2-bit, groups of 128, the small profile's 32 steps of 8 x 128 tokens);
with --threads 1 (the canonical run's setting) the rows are the notebook's own numbers.
"""

from __future__ import annotations

import dataclasses


def control_rows(lrs=(5e-4, 1e-4, 3e-5, 1e-5), *, steps: int = 32, bits: int = 2, group_size: int = 128) -> list[dict]:
    """One row per learning rate: {"lr", "control float ppl", "control + RTN ppl", "QAT ppl", "control loss first 5",
    "control loss last 5"}, plus the float model's perplexity in every row ("float ppl")."""
    import torch

    from ..lm import models
    from ..lm.perplexity import perplexity
    from ..lm.tokens import token_stream
    from .qat import QATConfig, qat_finetune
    from .rtn import quantize_model_rtn

    if not lrs or any(not lr > 0 for lr in lrs):
        raise ValueError(f"lrs must be positive learning rates, at least one; got {lrs!r}.")
    model, tok = models.load_model(dtype=torch.float32)
    train = token_stream("train", tok)
    ppl_float = perplexity(model, tok).ppl
    base = QATConfig(bits=bits, granularity="group", group_size=group_size, steps=steps, batch_size=8, seq_len=128,
                     seed=0)
    rows = []
    for lr in lrs:
        control = qat_finetune(model, train, dataclasses.replace(base, lr=lr, fake_quant=False))
        rtn = quantize_model_rtn(control.model, bits, granularity="group", group_size=group_size, inplace=False).model
        qat = qat_finetune(model, train, dataclasses.replace(base, lr=lr))
        summary = control.summary()
        rows.append({"lr": lr, "float ppl": ppl_float, "control float ppl": perplexity(control.model, tok).ppl,
                     "control + RTN ppl": perplexity(rtn, tok).ppl, "QAT ppl": perplexity(qat.model, tok).ppl,
                     "control loss first 5": summary["loss first 5"], "control loss last 5": summary["loss last 5"]})
        print(", ".join(f"{k} {v:.4g}" for k, v in rows[-1].items()), flush=True)
    return rows


def record_control_sweep(name: str | None = None, *, lrs=(5e-4, 1e-4, 3e-5, 1e-5), threads: int = 1) -> None:
    """Run control_rows on CPU and save them as data/results/<name>.json."""
    import torch

    from ..core.results import save_result

    torch.set_num_threads(threads)
    name = name or "cpu_qat_control"
    rows = control_rows(lrs)
    command = f"python -m course_lib.bench qat-control --lrs {' '.join(f'{lr:g}' for lr in lrs)} --threads {threads}"
    path = save_result(name, rows, command=command, summary={"cpu_threads": threads},
                       description="chapter 02: 2-bit g128 QAT and its control (the same fine-tune without fake "
                                   "quantization, then RTN) at several learning rates; 32 steps of 8 x 128 tokens of "
                                   "the training split, FAST perplexity")
    print(f"saved {path}")
