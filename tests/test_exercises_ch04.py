"""Chapter 04's exercises that implement (AWQ's scale search for one layer, SmoothQuant's fold): plausible wrong
solutions fail with a hint that names their mistake, correct variants pass, garbage never makes a check raise, the
cases cover what they claim (with a clear best ratio in every search), and the references are the course's
algorithms (the fold is what smooth_model does to a model, and keeps its float output).

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails; the warm-up formulas need nothing more.)
"""

from __future__ import annotations

import copy
import re
import time

import numpy as np
import pytest
import torch

from course_lib.awq.smoothquant import activation_absmax, smooth_model
from course_lib.exercises import ch04, load_solutions
from course_lib.lm import models
from course_lib.quant.affine import fake_quantize
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch04")


# --- the solutions and the stub ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n_cases", [("awq_search", 22), ("smooth_fold", 15)])
def test_solution_passes_without_a_hint_and_stub_is_not_attempted(name, n_cases, capsys):
    check = ch04.EXERCISES[name]
    ok, out = run(check, getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out

    def stub(*args):
        raise NotImplementedError

    ok, out = run(check, stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


def test_warm_ups_are_listed_apart():
    assert set(ch04.WARM_UPS) == {"awq_scale", "scaled_rounding_error", "smoothed_max", "awq_bits_per_weight"}
    assert set(ch04.EXERCISES) - set(ch04.WARM_UPS) == {"awq_search", "smooth_fold"}


# --- 5. awq_search: wrong solutions -----------------------------------------------------------------------------------

def _search(W, X, bits, group_size, duo, *, stat="mean", clamp=True, normalise=True, divide=True, loss="output",
            ratios=None, relative=True, duo_power="1-r", pick=min):
    """The search as a learner might write it, one choice swapped."""
    x_mean = X.abs().mean(0) if stat == "mean" else X.abs().max(0).values
    if clamp:
        x_mean = x_mean.clamp(min=1e-4)
    if duo:
        g = W.abs().view(W.shape[0], -1, group_size)
        if relative:
            g = g / g.max(dim=-1, keepdim=True).values.clamp(min=1e-12)
        w_mean = g.reshape(W.shape).mean(0).clamp(min=1e-4)
    tried = []
    for r in (ratios if ratios is not None else [i / 20 for i in range(20)]):
        s = x_mean ** r
        if duo:
            s = s / w_mean ** ((1 - r) if duo_power == "1-r" else r)
        if normalise:
            s = s / torch.sqrt(s.max() * s.min())
        Wq = fake_quantize(W * s, bits, symmetric=False, granularity="group", group_size=group_size)
        if divide:
            Wq = Wq / s
        err = (X @ Wq.T - X @ W.T) if loss == "output" else (Wq - W)
        tried.append((err.pow(2).mean().item(), s))
    return pick(tried, key=lambda t: t[0])[1]


def _named(name, fn, **kwargs):
    def wrong(*args):
        return fn(*args, **kwargs)
    wrong.__name__ = name
    return wrong


def as_max_abs(*args):
    return _search(*args, stat="max")


SEARCH_MISTAKES = [
    (_named("as_not_normalised", _search, normalise=False), "up to a constant factor"),
    (_named("as_Q_not_divided_by_s", _search, divide=False), "you compared Q(W * s) with W"),
    (_named("as_max_abs", _search, stat="max"), "AWQ's statistic is the mean"),
    (_named("as_weight_error", _search, loss="weight"), "you compared the weights"),
    (_named("as_linspace_grid", _search, ratios=torch.linspace(0, 1, 20).tolist()), "r = 1 is not tried"),
    (_named("as_duo_not_relative", _search, relative=False), "duo's weight statistic is relative"),
    (_named("as_duo_power_r", _search, duo_power="r"), "exponent is 1 - r"),
    (_named("as_duo_ignored", lambda W, X, b, g, duo: _search(W, X, b, g, False)), "with duo=True divide"),
    (_named("as_worst_ratio", _search, pick=max), "largest loss"),
]


# --- 6. smooth_fold: wrong solutions ----------------------------------------------------------------------------------

def _fold(nw, nb, ws, act, alpha, *, bias=True, inverted=False, per_layer=False, swap=False, rows=False,
          signed=False, alpha_half=False, clamp=True, w_dim=0):
    def scales(layers):
        w_max = torch.cat([w if signed else w.abs() for w in layers]).max(dim=w_dim).values
        a, w = (act.clamp(min=1e-5), w_max.clamp(min=1e-5)) if clamp else (act, w_max)
        if alpha_half:
            return torch.sqrt(a / w)
        return a ** (1 - alpha) / w ** alpha if swap else a ** alpha / w ** (1 - alpha)
    s_of = [scales([w]) for w in ws] if per_layer else [scales(ws)] * len(ws)
    s = s_of[0]
    new_nw = nw * s if inverted else nw / s
    new_nb = nb if nb is None or not bias else (nb * s if inverted else nb / s)
    new_ws = []
    for w, si in zip(ws, s_of):
        si = si.unsqueeze(1) if rows else si
        new_ws.append(w / si if inverted else w * si)
    return new_nw, new_nb, new_ws


FOLD_MISTAKES = [
    (_named("sf_bias_kept", _fold, bias=False), "bias was not divided"),
    (_named("sf_wrong_way_round", _fold, inverted=True), "wrong way round"),
    (_named("sf_scales_per_layer", _fold, per_layer=True), "each layer got its own scales"),
    (_named("sf_exponents_swapped", _fold, swap=True), "exponents are swapped"),
    (_named("sf_rows_scaled", _fold, rows=True), "you scaled the rows of W"),
    (_named("sf_signed_max", _fold, signed=True), "absolute value"),
    (_named("sf_sqrt_ratio", _fold, alpha_half=True), "alpha = 0.5's"),
    (_named("sf_no_clamp", _fold, clamp=False), "Clamp act_max and w_max"),
    (_named("sf_max_per_row", _fold, w_dim=1), "largest |W_ij| of each row"),
]


MISTAKES = [(name, wrong, named) for name, mistakes in (("awq_search", SEARCH_MISTAKES), ("smooth_fold", FOLD_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch04.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and out.count("\n") == 1 and "Hint: " in out, out
    assert named in hint_of(out), out


def test_a_missing_clamp_gets_its_hint_after_fake_quantize_refuses(capsys):
    # without the clamp a dead input channel makes s hold inf: fake_quantize raises, and the check says why
    ok, out = run(ch04.check_awq_search, _named("as_no_clamp", _search, clamp=False), capsys)
    first, second = out.rstrip("\n").split("\n")
    assert not ok and first.startswith("[x] awq_search: for edge case: input channels 7 and 90 always 0")
    assert "raised ValueError" in first and second.startswith("    Hint: ") and "Clamp mean |x|" in second
    # a learner whose own quantizer lets the NaN through gets the same hint from the diagnosis
    ok, out = run(ch04.check_awq_search, lambda *a: SOL.awq_search(*a) * torch.where(a[1].abs().sum(0) > 0, 1.0,
                                                                                      float("nan")), capsys)
    assert not ok and "Clamp mean |x|" in hint_of(out), out


def test_an_unrecognised_mistake_gets_the_general_hint(capsys):
    ok, out = run(ch04.check_awq_search, lambda *a: SOL.awq_search(*a).flip(0), capsys)
    assert not ok and hint_of(out).startswith("x_mean = X.abs().mean(dim=0).clamp(min=1e-4)"), out
    ok, out = run(ch04.check_smooth_fold, lambda nw, nb, ws, a, al: SOL.smooth_fold(nw, nb, ws, a.flip(0), al), capsys)
    assert not ok and hint_of(out).startswith("w_max = torch.cat([W.abs() for W in weights]).amax(dim=0)"), out


def test_the_fold_names_a_missing_or_extra_bias(capsys):
    ok, out = run(ch04.check_smooth_fold, lambda nw, nb, ws, a, al: (*SOL.smooth_fold(nw, nb, ws, a, al)[::2][:1],
                                                                     None, SOL.smooth_fold(nw, nb, ws, a, al)[2]),
                  capsys)
    assert not ok and "the norm has a bias: return its new value" in out, out
    ok, out = run(ch04.check_smooth_fold, lambda nw, nb, ws, a, al: SOL.smooth_fold(nw, nb, ws, a, al)[:2], capsys)
    assert not ok and "expected a tuple (norm_weight, norm_bias, weights)" in out, out


# --- correct variants pass --------------------------------------------------------------------------------------------

def _as_float64_vectorised(W, X, bits, group_size, duo):
    # statistics in float64, the 20 candidate scales stacked first; the loss as a squared norm over n * out
    x_mean = X.double().abs().mean(0).clamp(min=1e-4)
    r = torch.arange(20, dtype=torch.float64)[:, None] / 20
    s = x_mean ** r
    if duo:
        g = W.double().abs().reshape(W.shape[0], -1, group_size)
        w_mean = (g / g.amax(-1, keepdim=True).clamp(min=1e-12)).reshape(W.shape).mean(0).clamp(min=1e-4)
        s = s / w_mean ** (1 - r)
    s = (s / (s.amax(1, keepdim=True) * s.amin(1, keepdim=True)).sqrt()).float()
    losses = []
    for si in s:
        Wq = fake_quantize(W * si, bits, symmetric=False, granularity="group", group_size=group_size) / si
        losses.append(torch.linalg.vector_norm(X @ (Wq - W).T).item() ** 2 / (X.shape[0] * W.shape[0]))
    return s[int(np.argmin(losses))]


def _as_course_lib(W, X, bits, group_size, duo):
    from course_lib.awq import awq_scales, weight_mean
    x_mean = X.abs().mean(0)
    w_mean = weight_mean([W], group_size) if duo else None
    losses = []
    for i in range(20):
        s = awq_scales(x_mean, i / 20, w_mean)
        Wq = fake_quantize(W * s, bits, symmetric=False, granularity="group", group_size=group_size) / s
        losses.append(((X @ Wq.T - X @ W.T) ** 2).sum().item())   # a sum: the same argmin as the mean
    return awq_scales(x_mean, losses.index(min(losses)) / 20, w_mean)


def _sf_in_place_float64(nw, nb, ws, act, alpha):
    # in place on the inputs, the scales in float64, a tuple of layers
    w_max = torch.stack([w.abs().amax(0) for w in ws]).amax(0).double()
    s = act.double().clamp(min=1e-5).pow(alpha) * w_max.clamp(min=1e-5).pow(alpha - 1)
    for w in ws:
        w.mul_(s.float())
    return nw.div_(s.float()), None if nb is None else nb.div_(s.float()), tuple(ws)


def _sf_through_modules(nw, nb, ws, act, alpha):
    # what a learner might do with real modules: an nn.LayerNorm and nn.Linear layers, checked for the same output
    from torch import nn
    norm = nn.LayerNorm(len(nw), bias=nb is not None)
    layers = [nn.Linear(len(nw), w.shape[0], bias=False) for w in ws]
    with torch.no_grad():
        norm.weight.copy_(nw)
        if nb is not None:
            norm.bias.copy_(nb)
        for layer, w in zip(layers, ws):
            layer.weight.copy_(w)
        x = torch.randn(5, len(nw), generator=torch.Generator().manual_seed(0))
        before = torch.cat([layer(norm(x)) for layer in layers], 1)
        new_nw, new_nb, new_ws = SOL.smooth_fold(nw, nb, ws, act, alpha)
        norm.weight.copy_(new_nw)
        if nb is not None:
            norm.bias.copy_(new_nb)
        for layer, w in zip(layers, new_ws):
            layer.weight.copy_(w)
        after = torch.cat([layer(norm(x)) for layer in layers], 1)
        assert torch.allclose(after, before, rtol=1e-4, atol=1e-5)
    return norm.weight.detach(), None if nb is None else norm.bias.detach(), [layer.weight.detach() for layer in layers]


CORRECT = {"awq_search": [SOL.awq_search, _as_float64_vectorised, _as_course_lib],
           "smooth_fold": [SOL.smooth_fold, _sf_in_place_float64, _sf_through_modules]}


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in CORRECT.items() for v in vs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch04.EXERCISES[name], variant, capsys)
    assert ok is True and out.startswith(f"[ok] {name}: correct"), out


# --- the cases cover what they claim ----------------------------------------------------------------------------------

def test_search_cases_cover_seeds_widths_groups_and_edges():
    labels, cases = ch04.awq_search_cases()
    assert {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))} == {0, 1, 2}
    assert {b for *_, b, _, _ in cases} == {3, 4} and {duo for *_, duo in cases} == {False, True}
    assert {32, 64} <= {g for *_, g, _ in cases} and any(g == W.shape[1] for W, _, _, g, _ in cases)
    assert any(bool((X == 0).all(0).any()) and duo for W, X, _, _, duo in cases)
    assert any(bool((X == 0).all(0).any()) and not duo for W, X, _, _, duo in cases)
    assert any(bool((W.reshape(W.shape[0], -1, g) == 0).all(-1).any()) for W, _, _, g, _ in cases)


def test_every_search_has_a_clear_best_ratio_away_from_zero():
    # a correct implementation computed in another order cannot pick another ratio: the best loss beats the second
    # by far more than float32 noise; and the search matters (r = 0, plain RTN, never wins)
    for args, label in zip(ch04.awq_search_cases()[1], ch04.awq_search_cases()[0]):
        losses: list = []
        s = ch04._search_by_hand(*args, losses=losses)
        torch.testing.assert_close(s, ch04.reference_awq_search(*args), rtol=1e-6, atol=1e-7)
        first, second = sorted(losses)[:2]
        assert second / first - 1 > 1e-3, label
        assert losses.index(first) > 0, label


@pytest.mark.parametrize("kwargs, _", ch04._SEARCH_VARIANTS, ids=[str(k) for k, _ in ch04._SEARCH_VARIANTS])
def test_every_diagnosed_search_mistake_is_visible_in_some_case(kwargs, _):
    cases = ch04.awq_search_cases()[1]
    assert any(not ch04._same_tensor(ch04._search_by_hand(*a, **kwargs), ch04.reference_awq_search(*a))
               for a in cases)


def test_fold_cases_cover_alphas_biases_and_edges():
    labels, cases = ch04.smooth_fold_cases()
    assert {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))} == {0, 1, 2}
    assert {alpha for *_, alpha in cases} >= {0.0, 0.25, 0.5, 0.8, 1.0}
    assert {nb is None for _, nb, *_ in cases} == {True, False}
    assert {len(ws) for _, _, ws, _, _ in cases} == {1, 2, 3}
    assert any(len({w.shape[0] for w in ws}) > 1 for _, _, ws, _, _ in cases)                 # q/k/v-like
    assert any(bool((a == 0).any()) for *_, a, _ in cases)                                    # a dead channel
    assert any(bool((torch.cat(ws) == 0).all(0).any()) for _, _, ws, _, _ in cases)           # a zero column
    nw, nb, ws, _, _ = cases[0]
    assert len(ws) == 1 and ws[0].shape[0] == nw.shape[0]                 # square first: rows vs columns diagnosable


def test_the_fold_keeps_the_float_output():
    for nw, nb, ws, act, alpha in ch04.smooth_fold_cases()[1]:
        new_nw, new_nb, new_ws = ch04.reference_smooth_fold(nw, nb, ws, act, alpha)
        x_hat = torch.randn(7, len(nw), generator=torch.Generator().manual_seed(1))
        before = [(x_hat * nw + (0 if nb is None else nb)) @ w.T for w in ws]
        after = [(x_hat * new_nw + (0 if new_nb is None else new_nb)) @ w.T for w in new_ws]
        for b, a in zip(before, after):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("architecture", ["llama", "opt"])
def test_the_fold_reference_is_what_smooth_model_does(architecture):
    model = models.tiny_model(architecture)
    with torch.no_grad():
        for module in model.modules():  # give the norms weights and biases that are not 1 and 0
            if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
                module.weight.uniform_(0.5, 1.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0, 0.1)
    calib = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    act = activation_absmax(model, calib)
    smoothed = copy.deepcopy(model)
    smooth_model(smoothed, act, alpha=0.5)
    block, after = model.model.decoder.layers[0] if architecture == "opt" else model.model.layers[0], None
    after = smoothed.model.decoder.layers[0] if architecture == "opt" else smoothed.model.layers[0]
    norm, names, key = (("self_attn_layer_norm", ("q_proj", "k_proj", "v_proj"), "model.decoder.layers.0.self_attn_layer_norm")
                        if architecture == "opt" else
                        ("input_layernorm", ("q_proj", "k_proj", "v_proj"), "model.layers.0.input_layernorm"))
    src_norm = block.get_submodule(norm)
    nb = getattr(src_norm, "bias", None)
    new_nw, new_nb, new_ws = ch04.reference_smooth_fold(
        src_norm.weight.detach(), None if nb is None else nb.detach(),
        [block.self_attn.get_submodule(n).weight.detach() for n in names], act[key], 0.5)
    torch.testing.assert_close(new_nw, after.get_submodule(norm).weight.detach(), rtol=0, atol=0)
    if nb is not None:
        torch.testing.assert_close(new_nb, after.get_submodule(norm).bias.detach(), rtol=0, atol=0)
    for n, w in zip(names, new_ws):
        torch.testing.assert_close(w, after.self_attn.get_submodule(n).weight.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, _", ch04._FOLD_VARIANTS, ids=[str(k) for k, _ in ch04._FOLD_VARIANTS])
def test_every_diagnosed_fold_mistake_is_visible_in_some_case(kwargs, _):
    cases = ch04.smooth_fold_cases()[1]
    assert all(ch04._same_fold(ch04._fold_by_hand(*a), ch04.reference_smooth_fold(*a)) for a in cases)
    visible = []
    for a in cases:
        try:
            visible.append(not ch04._same_fold(ch04._fold_by_hand(*a, **kwargs), ch04.reference_smooth_fold(*a)))
        except RuntimeError:
            continue
    assert any(visible)


# --- garbage never makes a check raise --------------------------------------------------------------------------------

def _garbage(kind):
    def fn(first, *args):
        n = first.shape[1] if first.dim() == 2 else first.shape[0]
        return {
            "none": lambda: None,
            "list": lambda: [1.0] * n,
            "numpy": lambda: np.ones(n, dtype=np.float32),
            "scalar": lambda: 1.0,
            "0-d": lambda: torch.tensor(1.0),
            "complex": lambda: torch.ones(n, dtype=torch.complex64),
            "nan": lambda: torch.full((n,), float("nan")),
            "triple of tensors": lambda: (torch.ones(n), torch.ones(n), torch.ones(n)),
            "triple with a dict": lambda: (torch.ones(n), None, {"w": 1}),
            "triple of strings": lambda: ("a", "b", ["c"]),
        }[kind]()
    return fn


GARBAGE = ["none", "list", "numpy", "scalar", "0-d", "complex", "nan", "triple of tensors", "triple with a dict",
           "triple of strings"]


@pytest.mark.parametrize("name", ["awq_search", "smooth_fold"])
@pytest.mark.parametrize("kind", GARBAGE)
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch04.EXERCISES[name], _garbage(kind), capsys)
    assert ok is False and out.startswith(f"[x] {name}: for "), out


def test_the_learner_cannot_change_the_references_inputs(capsys):
    def mutator(nw, nb, ws, act, alpha):
        out = SOL.smooth_fold(nw.clone(), None if nb is None else nb.clone(), [w.clone() for w in ws], act, alpha)
        for w in ws:
            w.zero_()
        act.zero_()
        return out

    assert run(ch04.check_smooth_fold, mutator, capsys)[0]
    assert run(ch04.check_smooth_fold, _sf_in_place_float64, capsys)[0]


def test_checks_are_fast(capsys):
    for name in ("awq_search", "smooth_fold"):
        check, solution = ch04.EXERCISES[name], getattr(SOL, name)
        start = time.perf_counter()
        check(solution)
        check(MISTAKES[[n for n, *_ in MISTAKES].index(name)][1])  # a wrong answer runs the diagnosis too
        assert time.perf_counter() - start < 2.0, name
    capsys.readouterr()
