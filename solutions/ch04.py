"""Reference solutions for chapter 04's exercises (kept out of the notebooks)."""


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
