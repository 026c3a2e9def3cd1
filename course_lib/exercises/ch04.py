"""Checks for chapter 04.

Warm-ups (one formula each): AWQ's scale of one channel, a scaled weight's rounding error, SmoothQuant's balance,
the bits per weight of an AWQ checkpoint.

The exercises that implement part of the chapter's algorithms, on tensors:

5. ``check_awq_search``: AWQ's scale search for one linear layer (20 ratios, the layer's output error), with or
   without duo scaling. Compared with course_lib.awq.search_scales.
6. ``check_smooth_fold``: SmoothQuant's scales for a norm and the layers that read it, folded so that the float
   output does not change (a LayerNorm's bias too). Compared with course_lib.awq's smooth_scales and fold_scales.

Both run on random tensors (fixed seeds, several shapes) and edge cases. After a wrong attempt a diagnosis recomputes
the usual mistakes (no normalisation, Q(W s) not divided by s, the weights compared instead of the outputs, one s
per layer, the bias left alone, the fold the wrong way round, ...) and names the one that matches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..awq.core import fold_scales, search_scales
from ..awq.smoothquant import smooth_scales
from ..quant.affine import fake_quantize
from . import _clone_args, _short, _tensor_mismatch, check_against, check_cases, check_tensor_cases

WARM_UPS = ("awq_scale", "scaled_rounding_error", "smoothed_max", "awq_bits_per_weight")

def check_awq_scale(fn) -> bool:
    """fn(x_mean, j, ratio) -> s_j of AWQ's scales s = x_mean^ratio / sqrt(max(x_mean^ratio) * min(x_mean^ratio)),
    x_mean a list of mean |x| per input channel (all positive)."""
    cases = [(([1.0, 4.0, 2.0], 1, 0.5), 2 ** 0.5), (([1.0, 4.0, 2.0], 0, 0.5), 2 ** -0.5),
             (([1.0, 4.0, 2.0], 2, 0.5), 1.0), (([3.0, 0.5, 9.0, 1.0], 2, 0.0), 1.0),
             (([3.0, 0.5, 9.0, 1.0], 3, 0.25), (1.0 / (9.0 * 0.5) ** 0.5) ** 0.25)]
    return check_cases("awq_scale", fn, cases,
                       hint="raise every x_mean to the ratio, then divide by the square root of (largest * smallest).")


def check_scaled_rounding_error(fn) -> bool:
    """fn(w, x, step, s) -> |Q(w*s)/s - w| * |x|: the output error of one weight w (input x) when it is multiplied
    by s, rounded to the nearest multiple of `step`, and divided by s again (the step itself unchanged)."""
    cases = [((0.37, 2.0, 0.1, 1.0), 0.06), ((0.37, 2.0, 0.1, 2.0), 0.04), ((0.37, 2.0, 0.1, 4.0), 0.01),
             ((-0.26, 1.5, 0.25, 1.0), 0.015), ((-0.26, 1.5, 0.25, 3.0), 0.015)]
    return check_cases("scaled_rounding_error", fn, cases, rel=1e-6,
                       hint="q = step * round(w * s / step); the error is |q / s - w| * |x|. It is at most "
                            "step / (2 s) * |x|: a larger s shrinks the bound, but each case rounds differently.")


def check_smoothed_max(fn) -> bool:
    """fn(act_max, w_max, alpha) -> max|X_j / s_j| after SmoothQuant, s_j = act_max^alpha / w_max^(1 - alpha)."""
    cases = [((16.0, 0.25, 0.5), 2.0), ((100.0, 1.0, 0.5), 10.0), ((16.0, 0.25, 1.0), 1.0),
             ((16.0, 0.25, 0.0), 4.0), ((50.0, 0.02, 0.8), 50.0 ** 0.2 * 0.02 ** 0.2)]
    return check_cases("smoothed_max", fn, cases,
                       hint="s = act_max**alpha / w_max**(1 - alpha); the activation maximum becomes act_max / s "
                            "= act_max**(1 - alpha) * w_max**(1 - alpha).")


def check_awq_bits_per_weight(fn) -> bool:
    """fn(bits, group_size) -> bits per weight of an AWQ (GEMM) checkpoint layer: the packed codes plus, per group of
    each output row, an fp16 scale and a packed `bits`-bit zero point (no g_idx: AWQ never reorders columns)."""
    cases = [((4, 128), 4 + 20 / 128), ((4, 64), 4 + 20 / 64), ((4, 32), 4 + 20 / 32), ((3, 128), 3 + 19 / 128)]
    return check_cases("awq_bits_per_weight", fn, cases, hint="bits + (16 + bits) / group_size.")




# --- 5. AWQ's scale search for one linear layer -----------------------------------------------------------------------

SEARCH_SEEDS = (0, 1, 2)
# (out, in, tokens, group_size, bits, duo); group_size == in is one group per row
SEARCH_SHAPES = ((32, 128, 64, 32, 4, False), (48, 256, 96, 64, 3, False), (24, 128, 80, 128, 4, False),
                 (32, 128, 64, 32, 4, True), (48, 256, 96, 64, 3, True), (16, 192, 64, 64, 4, True))
# s holds values of about 0.1 to 10, computed from the same float32 statistics by any correct implementation (the
# argmin over the 20 ratios is clear in every case: tests/test_exercises_ch04.py checks the margin).
SEARCH_ATOL, SEARCH_RTOL = 1e-5, 1e-4


def _search_inputs(out_f: int, in_f: int, tokens: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, X): W ~ N(0, 1); X's channels scaled by exp(0.8 N(0, 1)) and 3 salient channels 8 times larger."""
    W = torch.randn(out_f, in_f, generator=g)
    scale = torch.exp(0.8 * torch.randn(in_f, generator=g))
    scale[torch.randperm(in_f, generator=g)[:3]] *= 8.0
    return W, torch.randn(tokens, in_f, generator=g) * scale


def awq_search_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (W, X, bits, group_size, duo)) of check_awq_search."""
    labels, cases = [], []
    for seed in SEARCH_SEEDS:
        for out_f, in_f, tokens, group_size, bits, duo in SEARCH_SHAPES:
            W, X = _search_inputs(out_f, in_f, tokens, torch.Generator().manual_seed(1000 * seed + in_f + tokens))
            labels.append(f"seed {seed}, W ({out_f}, {in_f}), X ({tokens}, {in_f}), {bits} bits, group_size "
                          f"{group_size}{' (one group per row)' if group_size == in_f else ''}, duo={duo}")
            cases.append((W, X, bits, group_size, duo))
    g = torch.Generator().manual_seed(77)
    for duo in (False, True):
        W, X = _search_inputs(32, 128, 64, g)
        X[:, [7, 90]] = 0.0
        labels.append(f"edge case: input channels 7 and 90 always 0 (mean |x| = 0), W (32, 128), 4 bits, group_size "
                      f"32, duo={duo}")
        cases.append((W, X, 4, 32, duo))
    W, X = _search_inputs(32, 128, 64, g)
    W[5, 32:64] = 0.0
    labels.append("edge case: row 5's second group all zeros, W (32, 128), 4 bits, group_size 32, duo=True")
    cases.append((W, X, 4, 32, True))
    W, X = _search_inputs(32, 128, 64, g)
    X[:, 11] *= 50.0
    labels.append("edge case: input channel 11 fifty times larger than the others, W (32, 128), 3 bits, "
                  "group_size 64, duo=False")
    cases.append((W, X, 3, 64, False))
    return labels, cases


@torch.no_grad()
def reference_awq_search(W: torch.Tensor, X: torch.Tensor, bits: int, group_size: int, duo: bool) -> torch.Tensor:
    """course_lib.awq.search_scales on an nn.Linear holding W (the inspected module is the layer itself)."""
    layer = nn.Linear(W.shape[1], W.shape[0], bias=False)
    layer.weight.copy_(W)
    out_fp = layer(X)
    return search_scales([layer], X, lambda: layer(X), out_fp, bits, group_size=group_size, symmetric=False,
                         duo=duo).scales


def _search_by_hand(W: torch.Tensor, X: torch.Tensor, bits: int, group_size: int, duo: bool, *,
                    normalise: bool = True, divide: bool = True, stat: str = "mean", loss: str = "output",
                    grid: str = "i/n", relative: bool = True, exponent: str = "1-r", use_duo: bool = True,
                    pick: str = "min", losses: list | None = None) -> torch.Tensor:
    """The search as a learner writes it, with one choice passed in; the defaults give the reference's scales.
    `losses`, if given, receives the loss of every ratio."""
    x_mean = (X.abs().mean(dim=0) if stat == "mean" else X.abs().amax(dim=0)).clamp(min=1e-4)
    if duo and use_duo:
        blocks = W.abs().reshape(W.shape[0], -1, group_size)
        if relative:
            blocks = blocks / blocks.amax(dim=-1, keepdim=True).clamp(min=1e-12)
        w_mean = blocks.reshape(W.shape).mean(dim=0).clamp(min=1e-4)
    y = X @ W.T
    ratios = [i / 20 for i in range(20)] if grid == "i/n" else torch.linspace(0, 1, 20).tolist()
    best = None
    for r in ratios:
        s = x_mean.pow(r)
        if duo and use_duo:
            s = s / w_mean.pow(1 - r if exponent == "1-r" else r)
        s = s.clamp(min=1e-4)
        if normalise:
            s = s / (s.max() * s.min()).sqrt()
        q = fake_quantize(W * s, bits, symmetric=False, granularity="group", group_size=group_size)
        Wq = q / s if divide else q
        value = ((X @ Wq.T - y) ** 2).mean().item() if loss == "output" else ((Wq - W) ** 2).mean().item()
        if losses is not None:
            losses.append(value)
        if best is None or (value < best[0] if pick == "min" else value > best[0]):
            best = (value, s)
    return best[1]


_SEARCH_MESSAGES = {
    "normalise": ("your scales are the right ones up to a constant factor: normalise them, s / sqrt(max(s) * "
                  "min(s)), so that max(s) * min(s) = 1 (the loss barely changes, the scales you return do)."),
    "divide": ("you compared Q(W * s) with W: the quantized layer computes Q(W diag(s)) diag(s)^-1 x (the input is "
               "divided by s, folded into the layer before), so compare X @ (Q(W * s) / s).T with X @ W.T."),
    "max": "you used max |x| per channel: AWQ's statistic is the mean |x_j| over the tokens, X.abs().mean(dim=0).",
    "weight": ("you compared the weights, (Q(W s)/s - W)^2: AWQ compares the layer's outputs on the calibration "
               "inputs, mean((X @ W_q.T - X @ W.T)^2), which is what makes it activation-aware."),
    "grid": ("your ratios are not r = i / 20 for i = 0..19 (0, 0.05, ..., 0.95; r = 1 is not tried): "
             "torch.linspace(0, 1, 20) gives other values."),
    "relative": ("duo's weight statistic is relative: each |w| divided by the largest |w| of its group (of "
                 "group_size inputs in its row), then the mean over the rows, per input channel."),
    "exponent": "with duo the scales are x_mean^r / w_mean^(1 - r): the weight statistic's exponent is 1 - r.",
    "use_duo": "with duo=True divide by the weight statistic: s = x_mean^r / w_mean^(1 - r) before normalising.",
    "pick": "you kept the ratio with the largest loss: keep the smallest.",
}
_SEARCH_VARIANTS = tuple((kwargs, _SEARCH_MESSAGES[key]) for kwargs, key in (
    (dict(normalise=False), "normalise"), (dict(divide=False), "divide"), (dict(stat="max"), "max"),
    (dict(loss="weight"), "weight"), (dict(grid="linspace"), "grid"), (dict(relative=False), "relative"),
    (dict(exponent="r"), "exponent"), (dict(use_duo=False), "use_duo"), (dict(pick="max"), "pick")))
_SEARCH_NONFINITE = ("your scales hold NaN or inf: an input channel that is always 0 has mean |x| = 0, and 0^r = 0 "
                     "makes max(s) * min(s) = 0. Clamp mean |x| (and duo's w_mean) at 1e-4 before the power, and "
                     "clamp each group's largest |w| at 1e-12 before dividing by it.")
_SEARCH_HINT = ("x_mean = X.abs().mean(dim=0).clamp(min=1e-4); for r = i / 20, i = 0..19: s = x_mean**r (duo: "
                "/ w_mean**(1 - r)), s = s / sqrt(s.max() * s.min()); W_q = fake_quantize(W * s, bits, "
                "symmetric=False, granularity='group', group_size=group_size) / s; loss = mean((X @ W_q.T - "
                "X @ W.T)**2). Return the s of the smallest loss.")


def _same_tensor(a: Any, b: Any) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and bool(torch.allclose(a.double(), b.double(), atol=1e-5, rtol=1e-4)))


def _diagnosis(fn, cases: list[tuple], by_hand, variants, same, nonfinite: str | None = None,
               finite=None, comparable=lambda answer: answer) -> Any:
    """A diagnose(args, got) for check_against: `nonfinite` when finite(got) is False; else the message of the
    mistake by_hand(*args, **kwargs) that differs from the reference on this case and gives the learner's answer.
    Where several do (two mistakes can both end at r = 0), fn runs on the other cases and the mistake that explains
    all of them wins (else the first that explains this one); comparable(answer) puts its answers in the form that
    `same` compares (as the check's compare does). Chapter 07's checks use it too."""
    def diagnose(args: tuple, got: Any) -> str | None:
        if finite is not None and not finite(got):
            return nonfinite
        expected = by_hand(*args)
        candidates = []
        for kwargs, message in variants:
            try:
                mistake = by_hand(*args, **kwargs)
            except RuntimeError:  # a mistake that cannot run on this case's shapes (it raises for the learner too)
                continue
            if not same(mistake, expected) and same(got, mistake):
                candidates.append((kwargs, message))
        if len(candidates) <= 1:
            return candidates[0][1] if candidates else None
        answers = []
        for other in cases:
            try:
                answers.append((other, comparable(fn(*_clone_args(other)))))
            except Exception:  # the learner's function fails elsewhere: judge by the cases it answers
                continue
        for kwargs, message in candidates:
            try:
                if all(same(answer, by_hand(*other, **kwargs)) for other, answer in answers):
                    return message
            except RuntimeError:
                continue
        return candidates[0][1]
    return diagnose


def _noting_errors(fn, seen: list):
    """fn, noting the exceptions it raises (other than NotImplementedError, the stub) in `seen`."""
    def wrapped(*args):
        try:
            return fn(*args)
        except NotImplementedError:
            raise
        except Exception as exc:
            seen.append(exc)
            raise
    return wrapped


def _finite_tensor(got: torch.Tensor) -> bool:
    return bool(torch.isfinite(got).all())


def check_awq_search(fn) -> bool:
    """fn(W, X, bits, group_size, duo) -> s, AWQ's scales (in,) for one linear layer W (out, in) with inputs X
    (tokens, in).

    x_mean = mean over the tokens of |X| per input channel, clamped at 1e-4. duo=True (llm-compressor's and
    GPTQModel's default) also uses w_mean: each |W_ij| divided by the largest |w| of its group (group_size
    consecutive inputs of row i; clamp that maximum at 1e-12), averaged over the rows, clamped at 1e-4. For
    r = i / 20, i = 0..19: s = x_mean^r (duo: x_mean^r / w_mean^(1 - r)), normalised s / sqrt(max(s) * min(s));
    W_q = fake_quantize(W * s, bits, symmetric=False, granularity="group", group_size=group_size) / s
    (course_lib.quant.affine); loss = mean((X @ W_q.T - X @ W.T)^2). Return the s of the smallest loss.

    Checked on W (16..48, 128..256), 3 and 4 bits, group_size 32, 64 and one group per row, with and without duo,
    seeds 0, 1, 2; then input channels that are always 0, an all-zero weight group, one channel 50 times larger.
    Compared with course_lib.awq.search_scales within |got - expected| <= 1e-5 + 1e-4 * |expected|.
    """
    labels, cases = awq_search_cases()
    errors: list = []
    fn = _noting_errors(fn, errors)
    diagnose = _diagnosis(fn, cases, _search_by_hand, _SEARCH_VARIANTS, _same_tensor, _SEARCH_NONFINITE,
                          _finite_tensor)
    ok = check_tensor_cases("awq_search", fn, cases, reference_awq_search, atol=SEARCH_ATOL, rtol=SEARCH_RTOL,
                            labels=labels, hint=_SEARCH_HINT, diagnose=diagnose)
    if not ok and errors and isinstance(errors[-1], ValueError) and "NaN" in str(errors[-1]):
        print(f"    Hint: {_SEARCH_NONFINITE}")  # fake_quantize refused the scaled weights W * s
    return ok


# --- 6. SmoothQuant's fold into a norm ----------------------------------------------------------------------------------

FOLD_SEEDS = (0, 1, 2)
# (features, output sizes of the layers that read the norm, alpha, norm has a bias); the first is square, so that
# mixing up rows and columns gives an answer (to diagnose) rather than a shape error
FOLD_SHAPES = ((48, (48,), 0.5, True), (64, (64, 16, 16), 0.5, False), (96, (192, 192), 0.8, True),
               (64, (32, 32, 32), 0.25, False))
# Norm weights of about 1, layer weights of about 0.05, scales from about 0.3 to 30: float32 arithmetic in another
# order differs by about 1e-7 relative.
FOLD_ATOL, FOLD_RTOL = 1e-6, 1e-5


def _fold_inputs(d: int, outs: tuple[int, ...], bias: bool, g: torch.Generator):
    """(norm_weight, norm_bias or None, [weights], act_max): act_max with 3 outlier channels 30 times larger."""
    norm_weight = 0.5 + torch.rand(d, generator=g)
    norm_bias = 0.1 * torch.randn(d, generator=g) if bias else None
    weights = [0.05 * torch.randn(o, d, generator=g) * torch.exp(0.3 * torch.randn(d, generator=g)) for o in outs]
    act_max = torch.exp(0.5 * torch.randn(d, generator=g))
    act_max[torch.randperm(d, generator=g)[:3]] *= 30.0
    return norm_weight, norm_bias, weights, act_max


def smooth_fold_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (norm_weight, norm_bias, weights, act_max, alpha)) of check_smooth_fold."""
    labels, cases = [], []
    for seed in FOLD_SEEDS:
        for d, outs, alpha, bias in FOLD_SHAPES:
            nw, nb, ws, act = _fold_inputs(d, outs, bias, torch.Generator().manual_seed(100 * seed + d + len(outs)))
            labels.append(f"seed {seed}, {d} features, layers of {', '.join(map(str, outs))} outputs, alpha {alpha}, "
                          f"{'a norm with a bias' if bias else 'no bias'}")
            cases.append((nw, nb, ws, act, alpha))
    g = torch.Generator().manual_seed(300)
    for alpha in (0.0, 1.0):
        nw, nb, ws, act = _fold_inputs(64, (64, 16), True, g)
        labels.append(f"edge case: alpha {alpha}, 64 features, layers of 64 and 16 outputs, a norm with a bias")
        cases.append((nw, nb, ws, act, alpha))
    nw, nb, ws, act = _fold_inputs(64, (64, 16, 16), False, g)
    act[9] = 0.0
    for w in ws:
        w[:, 30] = 0.0
    labels.append("edge case: activation channel 9 always 0 (act_max 0) and weight column 30 all zeros in every "
                  "layer, 64 features, alpha 0.5")
    cases.append((nw, nb, ws, act, 0.5))
    return labels, cases


@torch.no_grad()
def reference_smooth_fold(norm_weight, norm_bias, weights, act_max, alpha):
    """What course_lib.awq.smoothquant.smooth_model does for one norm: smooth_scales with the largest |W_ij| over
    the rows of every layer, then course_lib.awq.fold_scales into a norm and nn.Linear layers holding the tensors."""
    d = norm_weight.shape[0]
    norm = nn.LayerNorm(d, bias=norm_bias is not None)
    norm.weight.copy_(norm_weight)
    if norm_bias is not None:
        norm.bias.copy_(norm_bias)
    layers = []
    for w in weights:
        layer = nn.Linear(d, w.shape[0], bias=False)
        layer.weight.copy_(w)
        layers.append(layer)
    w_max = torch.cat([layer.weight.abs() for layer in layers]).amax(dim=0)
    fold_scales(norm, layers, smooth_scales(act_max, w_max, alpha))
    return (norm.weight.detach().clone(), None if norm_bias is None else norm.bias.detach().clone(),
            [layer.weight.detach().clone() for layer in layers])


def _fold_by_hand(norm_weight, norm_bias, weights, act_max, alpha, *, bias: bool = True, inverted: bool = False,
                  per_layer: bool = False, exponent: str = "normal", rows: bool = False, signed: bool = False,
                  sqrt: bool = False, w_dim: int = 0):
    """The fold as a learner writes it, with one choice passed in; the defaults give the reference's."""
    def scales(ws):
        w_max = torch.cat([w if signed else w.abs() for w in ws]).amax(dim=w_dim).clamp(min=1e-5)
        a = act_max.clamp(min=1e-5)
        if sqrt:
            return (a / w_max).sqrt()
        return a ** alpha / w_max ** (1 - alpha) if exponent == "normal" else a ** (1 - alpha) / w_max ** alpha
    s_each = [scales([w]) for w in weights] if per_layer else [scales(weights)] * len(weights)
    s = s_each[0]
    nw = norm_weight * s if inverted else norm_weight / s
    nb = None if norm_bias is None else (norm_bias if not bias else norm_bias * s if inverted else norm_bias / s)
    new = []
    for w, si in zip(weights, s_each):
        si = si[:, None] if rows else si[None, :]
        new.append(w / si if inverted else w * si)
    return nw, nb, new


def _fold_parts(answer: Any) -> tuple[str, Any]:
    """('', (weight, bias or None, [weights])) when answer has the fold's form, else (what is wrong, None)."""
    if not isinstance(answer, (tuple, list)) or len(answer) != 3:
        return ("expected a tuple (norm_weight, norm_bias, weights): the new norm weight, the new norm bias (None "
                f"when there is none) and the list of new layer weights; got {type(answer).__name__} "
                f"{_short(answer)}."), None
    nw, nb, ws = answer
    if not isinstance(ws, (tuple, list)):
        return f"expected the layers' weights as a list of tensors, got {type(ws).__name__} {_short(ws)}.", None
    return "", (nw, nb, list(ws))


def _compare_fold(got: Any, expected: tuple) -> tuple[str, Any]:
    problem, parts = _fold_parts(got)
    if problem:
        return problem, None
    (nw, nb, ws), (e_nw, e_nb, e_ws) = parts, expected
    if len(ws) != len(e_ws):
        return f"expected {len(e_ws)} layer weights, got {len(ws)}.", None
    if (nb is None) != (e_nb is None):
        return ("the norm has no bias: return None as its new bias." if e_nb is None else
                "the norm has a bias: return its new value (not None)."), None
    pairs = [("the norm's weight", nw, e_nw)] + ([("the norm's bias", nb, e_nb)] if e_nb is not None else [])
    pairs += [(f"layer {i}'s weight", w, e) for i, (w, e) in enumerate(zip(ws, e_ws))]
    first, comparable = "", True
    for what, g, e in pairs:
        text, shape_ok = _tensor_mismatch(g, e, FOLD_ATOL, FOLD_RTOL, torch)
        comparable = comparable and shape_ok  # the diagnosis needs every part a tensor of the right shape
        if text and not first:
            first = f"{what}: {text}"
    return first, (parts if comparable else None)


_FOLD_MESSAGES = {
    "bias": ("the norm's bias was not divided: a LayerNorm computes weight * x_hat + bias, and both terms of "
             "channel j must be divided by s_j, or the layers' output changes."),
    "inverted": ("you folded the wrong way round: the float output is unchanged, but the activations must be "
                 "divided by s (norm weight and bias / s) and the weight columns multiplied by it (W * s), which "
                 "moves the outliers from the activations into the weights."),
    "per_layer": ("each layer got its own scales: one norm can divide its output channel j by only one s_j, so s "
                  "comes from the largest |W_ij| over the rows of every layer that reads the norm, together."),
    "exponent": "the exponents are swapped: s = act_max^alpha / w_max^(1 - alpha).",
    "rows": ("you scaled the rows of W: s_j belongs to input channel j, so multiply column j of every layer's "
             "weight, W * s[None, :]."),
    "signed": "w_max is the largest |W_ij| (absolute value) over the rows, per input column j.",
    "w_dim": ("your w_max is the largest |W_ij| of each row: SmoothQuant needs it per input column j, over the rows "
              "of every layer, torch.cat([W.abs() for W in weights]).amax(dim=0)."),
    "sqrt": ("your scales are sqrt(act_max / w_max), alpha = 0.5's: use alpha, s = act_max^alpha / "
             "w_max^(1 - alpha)."),
}
_FOLD_VARIANTS = tuple((kwargs, _FOLD_MESSAGES[key]) for kwargs, key in (
    (dict(bias=False), "bias"), (dict(inverted=True), "inverted"), (dict(per_layer=True), "per_layer"),
    (dict(exponent="swapped"), "exponent"), (dict(rows=True), "rows"), (dict(signed=True), "signed"),
    (dict(sqrt=True), "sqrt"), (dict(w_dim=1), "w_dim")))
_FOLD_NONFINITE = ("your result holds NaN or inf: a channel whose activations (or whose weight column) are all 0 "
                   "gives 0 to a power. Clamp act_max and w_max at 1e-5 before the powers.")
_FOLD_HINT = ("w_max = torch.cat([W.abs() for W in weights]).amax(dim=0) (per input column, over every row of every "
              "layer); s = act_max.clamp(min=1e-5)**alpha / w_max.clamp(min=1e-5)**(1 - alpha); return "
              "(norm_weight / s, norm_bias / s or None, [W * s for W in weights]).")


def _same_fold(a: Any, b: Any) -> bool:
    _, pa = _fold_parts(a)
    _, pb = _fold_parts(b)
    if pa is None or pb is None or len(pa[2]) != len(pb[2]) or (pa[1] is None) != (pb[1] is None):
        return False
    pairs = [(pa[0], pb[0])] + ([(pa[1], pb[1])] if pa[1] is not None else []) + list(zip(pa[2], pb[2]))
    return all(isinstance(x, torch.Tensor) and x.shape == y.shape
               and bool(torch.allclose(x.double(), y.double(), atol=1e-6, rtol=1e-4)) for x, y in pairs)


def _finite_fold(got: tuple) -> bool:
    nw, nb, ws = got
    return all(bool(torch.isfinite(t).all()) for t in [nw, *([nb] if nb is not None else []), *ws])


def _cloning(fn):
    """fn, given its own copies of the tensors inside the list argument too (check_against copies the list only)."""
    def wrapped(norm_weight, norm_bias, weights, act_max, alpha):
        return fn(norm_weight, norm_bias, [w.clone() for w in weights], act_max, alpha)
    return wrapped


def check_smooth_fold(fn) -> bool:
    """fn(norm_weight, norm_bias, weights, act_max, alpha) -> (norm_weight, norm_bias, weights) after SmoothQuant's
    fold: the norm (weight (d,), bias (d,) or None) feeds every layer in `weights` (a list of (out_i, d) tensors).

    act_max (d,): max |x_j| of each input channel over the calibration tokens. w_max_j: the largest |W_ij| over the
    rows of all the layers together. s = act_max^alpha / w_max^(1 - alpha), both clamped at 1e-5 first. The norm's
    weight and bias are divided by s (channel j by s_j), every layer's column j multiplied by s_j: the layers'
    float outputs are unchanged. Return the new norm weight, the new bias (None if there is none) and the list of
    new layer weights.

    Checked on 48 to 96 features, one to three layers (q/k/v-like with fewer k and v outputs, gate/up-like),
    alpha 0.25, 0.5 and 0.8, with and without a bias, seeds 0, 1, 2; then alpha 0 and 1, a channel whose activations
    are always 0 and a weight column of zeros. Compared with course_lib.awq (smooth_scales and fold_scales, as
    smoothquant.smooth_model does) within |got - expected| <= 1e-6 + 1e-5 * |expected|.
    """
    labels, cases = smooth_fold_cases()
    fn = _cloning(fn)
    diagnose = _diagnosis(fn, cases, _fold_by_hand, _FOLD_VARIANTS, _same_fold, _FOLD_NONFINITE, _finite_fold)
    return check_against("smooth_fold", fn, cases, reference_smooth_fold, _compare_fold, labels=labels,
                         hint=_FOLD_HINT, diagnose=diagnose)


EXERCISES = {
    "awq_scale": check_awq_scale,
    "scaled_rounding_error": check_scaled_rounding_error,
    "smoothed_max": check_smoothed_max,
    "awq_bits_per_weight": check_awq_bits_per_weight,
    "awq_search": check_awq_search,
    "smooth_fold": check_smooth_fold,
}
