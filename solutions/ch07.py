"""Reference solutions for chapter 07's exercises (kept out of the notebooks)."""


def wanda_first(weights: list[float], norms: list[float]) -> int:
    # Wanda's score is |w| times the input feature's norm; the lowest goes first.
    scores = [abs(w) * n for w, n in zip(weights, norms)]
    return min(range(len(scores)), key=scores.__getitem__)


def sparse24_bytes(out_features: int, in_features: int, value_bits: int) -> float:
    # Half the values survive; each carries a 2-bit index of its slot in the group of 4.
    return out_features * in_features / 2 * (value_bits + 2) / 8


def kv_group_params(hidden: int, head_dim: int, q_per_group: int) -> int:
    # k and v: one head each; q: q_per_group heads; o_proj: the same q heads' columns.
    return (2 + 2 * q_per_group) * hidden * head_dim
