"""Reference solutions for chapter 04's exercises (kept out of the notebooks). Plain Python and torch, written from
the definitions; only the fake quantization comes from course_lib (chapter 02)."""

import torch

from course_lib.quant.affine import fake_quantize


def awq_scale(x_mean: list[float], j: int, ratio: float) -> float:
    # s = x_mean^ratio, normalised so that max(s) * min(s) = 1: divide by sqrt(max * min) of the powered values.
    powered = [x ** ratio for x in x_mean]
    return powered[j] / (max(powered) * min(powered)) ** 0.5


def scaled_rounding_error(w: float, x: float, step: float, s: float) -> float:
    # Scale the weight up, round it on the unchanged grid, scale back: the weight's error is at most step / (2 s).
    q = step * round(w * s / step)
    return abs(q / s - w) * abs(x)


def smoothed_max(act_max: float, w_max: float, alpha: float) -> float:
    # SmoothQuant divides the activation channel by s = act_max^alpha / w_max^(1 - alpha).
    s = act_max ** alpha / w_max ** (1 - alpha)
    return act_max / s


def awq_bits_per_weight(bits: int, group_size: int) -> float:
    # Codes: `bits` each. Per group of a row: a float16 scale (16 bits) and a packed zero point (`bits` bits).
    return bits + (16 + bits) / group_size


def awq_search(W, X, bits, group_size, duo):
    # AWQ for one layer: try s = x_mean^r (duo: / w_mean^(1 - r)) for r = 0, 1/20, ..., 19/20 and keep the s whose
    # quantized layer, Q(W diag(s)) diag(s)^-1, gives the output closest to the float one on the calibration inputs.
    x_mean = X.abs().mean(dim=0).clamp(min=1e-4)                       # mean |x_j| over the tokens
    if duo:  # each |w| relative to the largest of its group, averaged over the rows
        groups = W.abs().reshape(W.shape[0], -1, group_size)
        relative = groups / groups.amax(dim=-1, keepdim=True).clamp(min=1e-12)
        w_mean = relative.reshape(W.shape).mean(dim=0).clamp(min=1e-4)
    y = X @ W.T
    best_loss, best_s = float("inf"), None
    for i in range(20):
        r = i / 20
        s = x_mean ** r / w_mean ** (1 - r) if duo else x_mean ** r
        s = s / (s.max() * s.min()).sqrt()                              # max(s) * min(s) = 1
        W_q = fake_quantize(W * s, bits, symmetric=False, granularity="group", group_size=group_size) / s
        loss = ((X @ W_q.T - y) ** 2).mean().item()
        if loss < best_loss:
            best_loss, best_s = loss, s
    return best_s


def smooth_fold(norm_weight, norm_bias, weights, act_max, alpha):
    # One s per channel for the norm and every layer reading it: w_max over the rows of all the layers together.
    w_max = torch.cat([W.abs() for W in weights]).amax(dim=0)
    s = act_max.clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)
    # The norm's output channel j (weight and bias) is divided by s_j, every layer's input column j multiplied by it.
    new_bias = None if norm_bias is None else norm_bias / s
    return norm_weight / s, new_bias, [W * s for W in weights]
