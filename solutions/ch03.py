"""Reference solutions for chapter 03's exercises (kept out of the notebooks)."""


def obs_update_2d(w0: float, w1: float, h00: float, h01: float, h11: float, step: float) -> float:
    # Round w0 to the grid; OBS moves w1 by delta_1 = -(w0 - q0) * Hinv[1, 0] / Hinv[0, 0].
    # For a 2x2 H, Hinv = [[h11, -h01], [-h01, h00]] / det, so Hinv[1, 0] / Hinv[0, 0] = -h01 / h11:
    # the compensation is w1 + (w0 - q0) * h01 / h11, the least-squares best w1 given q0.
    q0 = step * round(w0 / step)
    return w1 + (w0 - q0) * h01 / h11


def hessian_entry(X: list[list[float]], i: int, j: int) -> float:
    # H = 2/n X^T X: twice the average over tokens of x_t[i] * x_t[j].
    return 2 / len(X) * sum(x[i] * x[j] for x in X)


def damp_value(diag: list[float], percdamp: float) -> float:
    # Dampening adds lambda = percdamp * mean(diag H) to every diagonal entry of H.
    return percdamp * sum(diag) / len(diag)


def gptq_bits_per_weight(bits: int, group_size: int, out_features: int) -> float:
    # Each weight: its `bits`-bit code. Each group of `group_size` weights of a row: one fp16 scale (16 bits)
    # and one packed zero point (`bits` bits). Each input column: one int32 g_idx entry, shared by out_features weights.
    return bits + (16 + bits) / group_size + 32 / out_features
