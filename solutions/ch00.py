"""Reference solutions for chapter 00's exercises (kept out of the notebooks)."""


def weight_memory_gib(n_params: float, bits_per_param: float) -> float:
    return n_params * bits_per_param / 8 / 2**30


def decode_tokens_per_s(n_params: float, bits_per_param: float, bandwidth_gb_s: float) -> float:
    # Batch-1 decoding streams every weight from memory once per token.
    return bandwidth_gb_s * 1e9 / (n_params * bits_per_param / 8)
