"""Checks for chapter 04: AWQ's scales, a scaled weight's rounding error, SmoothQuant's balance, AWQ storage."""

from __future__ import annotations

from . import check_cases


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


EXERCISES = {
    "awq_scale": check_awq_scale,
    "scaled_rounding_error": check_scaled_rounding_error,
    "smoothed_max": check_smoothed_max,
    "awq_bits_per_weight": check_awq_bits_per_weight,
}
