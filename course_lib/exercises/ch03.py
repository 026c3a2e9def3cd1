"""Checks for chapter 03: the OBS update on two weights, a Hessian entry, dampening, GPTQ bits per weight."""

from __future__ import annotations

from . import check_cases


def check_obs_update_2d(fn) -> bool:
    """fn(w0, w1, h00, h01, h11, step) -> the new w1 after w0 is rounded to the nearest multiple of `step`
    and w1 is updated by OBS for the loss 1/2 d^T H d, H = [[h00, h01], [h01, h11]]."""
    cases = [((0.3, 1.0, 2.0, 1.0, 2.0, 1.0), 1.15), ((0.7, -0.5, 1.0, -0.5, 4.0, 0.5), -0.525),
             ((1.26, 2.0, 3.0, 0.9, 1.5, 0.25), 2.006), ((-0.4, 0.8, 1.0, 0.0, 1.0, 1.0), 0.8)]
    return check_cases("obs_update_2d", fn, cases,
                       hint="delta = -(w0 - q0) / [H^-1]_00 * H^-1[:, 0]; for 2x2, H^-1[1,0] / H^-1[0,0] = -h01 / h11.")


def check_hessian_entry(fn) -> bool:
    """fn(X, i, j) -> H[i][j] of H = 2/n X^T X, X a list of n token vectors (each a list of in_features floats)."""
    X1 = [[1.0, 2.0], [3.0, -1.0]]
    X2 = [[0.5, 0.0, 1.0], [1.0, 2.0, -2.0], [0.0, 1.0, 1.0], [2.0, 0.5, 0.0]]
    cases = [((X1, 0, 1), -1.0), ((X1, 0, 0), 10.0), ((X2, 2, 2), 3.0), ((X2, 0, 2), -0.75), ((X2, 1, 0), 1.5)]
    return check_cases("hessian_entry", fn, cases,
                       hint="H[i][j] = 2/n * sum over tokens t of x_t[i] * x_t[j]; n is the number of tokens.")


def check_damp_value(fn) -> bool:
    """fn(diag, percdamp) -> lambda, the value GPTQ adds to every diagonal entry of H: percdamp * mean(diag)."""
    cases = [(([1.0, 2.0, 3.0], 0.01), 0.02), (([4.0, 0.0, 0.5, 3.5], 0.1), 0.2), (([250.0], 1.0), 250.0)]
    return check_cases("damp_value", fn, cases, hint="lambda = percdamp * (sum of the diagonal / its length).")


def check_gptq_bits_per_weight(fn) -> bool:
    """fn(bits, group_size, out_features) -> bits per weight of a GPTQ checkpoint layer: the packed codes, an fp16
    scale and a packed `bits`-bit zero point per group of each output row, and an int32 g_idx per input column."""
    cases = [((4, 128, 256), 4 + 16 / 128 + 4 / 128 + 32 / 256), ((4, 128, 4096), 4 + 20 / 128 + 32 / 4096),
             ((8, 32, 768), 8 + 24 / 32 + 32 / 768), ((2, 64, 1024), 2 + 18 / 64 + 32 / 1024)]
    return check_cases("gptq_bits_per_weight", fn, cases,
                       hint="per weight: bits for the code, (16 + bits) / group_size for scale and zero point, "
                            "32 / out_features for g_idx (one int32 per input column, shared by the out_features rows).")


EXERCISES = {
    "obs_update_2d": check_obs_update_2d,
    "hessian_entry": check_hessian_entry,
    "damp_value": check_damp_value,
    "gptq_bits_per_weight": check_gptq_bits_per_weight,
}
