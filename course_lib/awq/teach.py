"""Chapter 04's experiments: salient channels, keeping 1% in float, and why scaling protects a channel.

    stats = channel_stats(model, calib)                         # mean and max |x| per input channel, every linear
    keep_salient(model_copy, stats, bits=3, fraction=0.01, by="activation")   # RTN, 1% of columns kept in float
    salient_output_error(x, W, stats[name]["mean"], bits=3, by="activation")  # the same, one layer's output error
    rows = scaling_rows(W, x, channel, scales=(1, 2, 4))         # one channel scaled up: its error and the group's step
    lm_eval_rows(models, tok, tasks=("course_ppl",), limit=24)  # lm-eval's metrics of several models (needs lm_eval)
    quantize_grid(model, tok, calib, configs)                   # gptq.teach's grid, with AWQ among the methods
"""

from __future__ import annotations

import torch
from torch import nn

from ..gptq import teach as gptq_teach
from ..lm.blocks import find_blocks
from ..quant.affine import dequantize, fake_quantize, quantize
from .model import awq_quantize_model

CRITERIA = ("activation", "weight", "random")


def _awq(model: nn.Module, calibration: torch.Tensor, cfg: dict):
    return awq_quantize_model(model, calibration, cfg["bits"], group_size=cfg.get("group_size"),
                              symmetric=cfg["symmetric"], clip=cfg.get("clip", True), duo=cfg.get("duo", False),
                              progress=False)


# AWQ in quantize_grid: config keys "clip" (default True) and "duo" (default False); zero point by default
AWQ_METHOD = gptq_teach.GridMethod(quantize=_awq, symmetric=False)


def quantize_grid(model, tokenizer, calibration: torch.Tensor, configs, **kwargs) -> list[dict]:
    """gptq.teach.quantize_grid with AWQ among the methods: {"method": "AWQ", "bits", "group_size",
    "symmetric" (default False), "clip" (default True), "duo" (default False)}."""
    return gptq_teach.quantize_grid(model, tokenizer, calibration, configs,
                                    methods={"AWQ": AWQ_METHOD, **kwargs.pop("methods", {})}, **kwargs)


def block_linears(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Full names of the nn.Linear layers of the decoder blocks (the layers the chapter quantizes)."""
    path, blocks, _ = find_blocks(model)
    return [f"{path}.{i}.{n}" for i, block in enumerate(blocks) for n, m in block.named_modules()
            if isinstance(m, nn.Linear) and not n.endswith(skip)]


@torch.no_grad()
def channel_stats(model: nn.Module, calibration: torch.Tensor, names: list[str] | None = None,
                  batch_size: int = 16) -> dict[str, dict[str, torch.Tensor]]:
    """Per input channel of each named linear layer (default: every block linear), over all calibration
    tokens: {"mean": mean |x_j|, "max": max |x_j|} (float32, on the model's device)."""
    from ..lm.blocks import check_calibration

    check_calibration(model, calibration)
    names = names or block_linears(model)
    sums: dict[str, torch.Tensor] = {}
    maxs: dict[str, torch.Tensor] = {}
    count = {"tokens": 0}

    def make(name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float().abs()
            sums[name] = sums.get(name, 0) + x.sum(dim=0)
            maxs[name] = torch.maximum(maxs[name], x.amax(dim=0)) if name in maxs else x.amax(dim=0)
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(make(n)) for n in names]
    try:
        for i in range(0, calibration.shape[0], batch_size):
            batch = calibration[i:i + batch_size]
            model(input_ids=batch, use_cache=False)
            count["tokens"] += batch.numel()
    finally:
        for h in handles:
            h.remove()
    return {n: {"mean": sums[n] / count["tokens"], "max": maxs[n]} for n in names}


def salient_columns(weight: torch.Tensor, act_mean: torch.Tensor, fraction: float, by: str,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the top `fraction` of input channels by `by`: "activation" (mean |x_j|), "weight"
    (mean |w_ij| over the output rows of column j) or "random". At least one channel."""
    if by not in CRITERIA:
        raise ValueError(f"by must be one of {CRITERIA}, got {by!r}.")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), e.g. 0.01 for 1% of the channels; got {fraction!r}.")
    d = weight.shape[1]
    k = max(1, round(fraction * d))
    if by == "random":
        return torch.randperm(d, generator=generator)[:k].to(weight.device)
    score = act_mean if by == "activation" else weight.detach().abs().float().mean(dim=0)
    return score.topk(k).indices


@torch.no_grad()
def keep_salient(model: nn.Module, stats: dict, bits: int, *, fraction: float = 0.01, by: str = "activation",
                 group_size: int | None = 128, symmetric: bool = False, seed: int = 0) -> int:
    """Round every layer in `stats` to `bits` (RTN, per group), except the top `fraction` of its input
    channels by `by`, whose weight columns stay in float (the paper's mixed-precision experiment).
    In place; returns the number of columns kept."""
    gen = torch.Generator().manual_seed(seed)
    kept = 0
    for name, st in stats.items():
        w = model.get_submodule(name).weight
        cols = salient_columns(w, st["mean"], fraction, by, gen)
        original = w[:, cols].clone()
        w.copy_(fake_quantize(w, bits, symmetric=symmetric, granularity="group" if group_size else "channel",
                              group_size=group_size))
        w[:, cols] = original
        kept += cols.numel()
    return kept


@torch.no_grad()
def salient_output_error(x: torch.Tensor, weight: torch.Tensor, act_mean: torch.Tensor, bits: int, *,
                         by: str | None = "activation", fraction: float = 0.01, group_size: int | None = 64,
                         symmetric: bool = False, seed: int = 0) -> float:
    """One layer's relative output error on its captured inputs x, ||x W_hat^T - x W^T|| / ||x W^T||, where W_hat
    is W rounded to `bits` (RTN per group) except the top `fraction` of input columns by `by`, kept in float
    (by=None: plain RTN). The layer-level version of keep_salient, cheap enough for a 30-layer model on a CPU."""
    w = weight.detach().float()
    w_hat = fake_quantize(w, bits, symmetric=symmetric, granularity="group" if group_size else "channel",
                          group_size=group_size)
    if by is not None:
        cols = salient_columns(w, act_mean.to(w.device), fraction, by, torch.Generator().manual_seed(seed))
        w_hat[:, cols] = w[:, cols]
    x = x.reshape(-1, x.shape[-1]).float()
    y = x @ w.T
    return (torch.linalg.vector_norm(x @ w_hat.T - y) / torch.linalg.vector_norm(y)).item()


@torch.no_grad()
def scaling_rows(W: torch.Tensor, x: torch.Tensor, channel: int, scales=(1.0, 1.5, 2.0, 4.0, 8.0), *,
                 bits: int = 4, group_size: int = 128, symmetric: bool = False) -> list[dict]:
    """Multiply input column `channel` of W by s (and its input by 1/s), quantize, and measure:
    the step of the channel's group relative to s = 1 ("step"), the channel's own output error
    ||(Q(w s)/s - w) x_j|| relative to s = 1 ("channel error"), and the whole output MSE ("output MSE").
    The paper's argument: the channel's error shrinks by about 1/s while the step barely moves, until
    the scaled column becomes the group's largest weight and the step starts to grow with s."""
    W = W.detach().float()
    x = x.detach().float()
    g = group_size
    grp = slice(channel // g * g, channel // g * g + g)
    ref = x @ W.T
    rows, base = [], None
    for s in scales:
        scale = torch.ones(W.shape[1], device=W.device)
        scale[channel] = s
        qt = quantize(W * scale, bits, symmetric=symmetric, granularity="group", group_size=g)
        q = dequantize(qt) / scale
        step = qt.scale[:, channel // g].mean().item()
        ch_err = (x[:, channel:channel + 1] * (q[:, channel] - W[:, channel])).pow(2).mean().sqrt().item()
        out_mse = (x @ q.T - ref).pow(2).mean().item()
        if base is None:
            base = (step, ch_err)
        is_max = (W * scale)[:, grp].abs().argmax(dim=1) == channel - grp.start
        rows.append({"s": s, "step": step / base[0], "channel error": ch_err / base[1], "output MSE": out_mse,
                     "rows where it sets the step": is_max.float().mean().item()})
    return rows


def lm_eval_rows(models: list[nn.Module], tokenizer, tasks, limit: int | None = None) -> list[dict]:
    """lm-eval's headline metrics (course_lib.lm.eval_tasks.evaluate) for each model, in order, with lm-eval's
    progress bars (stderr) and log lines below ERROR silenced. Needs lm_eval."""
    import contextlib
    import io

    from ..core.env import quiet_loggers
    from ..lm.eval_tasks import evaluate

    rows = []
    for m in models:
        with quiet_loggers("lm_eval"), contextlib.redirect_stderr(io.StringIO()):
            rows.append(evaluate(m, tokenizer, tasks=tasks, limit=limit))
    return rows
