"""What is alive during one forward pass of a transformers 5.17 Llama-family model (no grad, SDPA, CUDA).

Read from the installed source (models/llama/modeling_llama.py, cache_utils.DynamicLayer.update,
integrations/sdpa_attention.py, masking_utils.py) and from PyTorch's SDPA dispatch (sdp_utils.cpp)
and math fallback (attention.cpp). Python frees a tensor when its last reference goes, so a
tensor lives while a variable holds it:

* ``LlamaModel.forward`` keeps the embedding output (``inputs_embeds``) for the whole pass, and
  its loop variable keeps each decoder layer's *input* while the layer runs.
* A decoder layer keeps ``residual`` (its input, then the stream after attention) and the normed
  input of the sub-block it is running.
* ``LlamaMLP.forward`` is ``down(silu(gate(x)) * up(x))``: gate(x) is freed as soon as silu returns,
  so three T x I tensors are alive at the product: silu(gate), up and their product.
* RoPE: ``(q * cos) + (rotate_half(q) * sin)`` holds q, q*cos, the rotated copy, its product with
  sin and the sum: the original q is only freed when the attention rebinds ``query_states``.
* RMSNorm works in fp32: the input upcast (4 bytes a number), its square, the normalised fp32 copy,
  the cast back and the weighted output: at most 8 bytes per number beyond its input.
* DynamicLayer.update is ``torch.cat([old, new])``: a new tensor while the old one is alive. At
  prefill the cache copies the new keys and values; at decode each layer briefly holds its old
  and its grown tensor.
* SDPA: transformers passes no mask (prefill with an empty cache: is_causal; decode: one query)
  and ``enable_gqa=True``. fp16/bf16 run the flash (or cuDNN) kernel, which keeps no n x n
  scores. fp32 can't use flash, and the memory-efficient kernel does not take grouped KV heads
  (``check_batch_size_and_num_heads_dense<false>``), so fp32 with GQA falls back to the *math*
  kernel: it repeats K and V to all query heads and materialises the fp32 scores, softmax and a
  ``where`` copy (``_safe_softmax``): about 3.25 x batch x heads x q x kv x 4 bytes.
* lm_head runs on the last position only with ``logits_to_keep=1`` (what generate does), on all
  positions with 0.

Each ``Moment`` names the tensors alive at one instant beyond the weights and the workspace; the
peak is the largest. Only the last decoder layer matters: every layer is alike and the cache is
largest there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .shapes import ModelShape

FP32 = 4
INT64 = 8
BACKENDS = ("flash", "efficient", "math")


@dataclass(frozen=True)
class Moment:
    """One instant of the forward pass: the cache then, and the other tensors alive (bytes by name)."""

    name: str
    cache: float
    live: dict = field(default_factory=dict)

    @property
    def activations(self) -> float:
        return sum(self.live.values())

    @property
    def total(self) -> float:
        return self.cache + self.activations


def sdpa_backend(shape: ModelShape, dtype_bytes: int, *, masked: bool = False) -> str:
    """The SDPA kernel PyTorch picks on an Ampere/Hopper GPU for this call (memory-wise cuDNN == flash).

    flash: fp16/bf16, head_dim <= 256, no explicit mask (GQA allowed). efficient: any float dtype and
    a mask, but query and KV heads must match. math: everything else (fp32 with GQA, notably).
    With an explicit mask transformers repeats K/V to all heads itself (repeat_kv), so heads match.
    """
    if dtype_bytes == 2 and shape.head_dim <= 256 and not masked:
        return "flash"
    if masked or shape.kv_heads == shape.q_heads:
        return "efficient"
    return "math"


def _math_sdpa(shape: ModelShape, batch: int, q_len: int, kv_len: int, dtype_bytes: int, causal: bool) -> dict:
    """Tensors alive at the peak of PyTorch's math SDPA (attention.cpp, _scaled_dot_product_attention_math)."""
    acc = FP32  # fp16/bf16 inputs are upcast to fp32 first (allowFP16BF16ReductionMathSDP is off by default)
    q_acc = batch * q_len * shape.q_heads * shape.head_dim * acc
    kv_acc = batch * kv_len * shape.kv_heads * shape.head_dim * acc
    expanded = batch * kv_len * shape.q_heads * shape.head_dim * acc  # K or V repeated to all query heads
    scores = batch * shape.q_heads * q_len * kv_len * acc
    live = {}
    if dtype_bytes != acc:
        live["math sdpa: fp32 copies of q, k, v"] = q_acc + 2 * kv_acc
    live["math sdpa: q x sqrt(scale)"] = q_acc
    if causal and q_len > 1:
        live["math sdpa: causal mask (float)"] = q_len * kv_len * acc
    if shape.q_heads != shape.kv_heads:
        live["math sdpa: K, V repeated to query heads"] = 2 * expanded
    at_matmul = q_acc + expanded + scores  # q reshaped for bmm (a copy: q is head-transposed), k^T x scale, scores
    # softmax's input and output, plus the bool mask of -inf entries; the H200 grid shows no third score tensor
    at_softmax = 2 * scores + scores / acc
    live["math sdpa: scores, softmax (peak of matmul / softmax)"] = max(at_matmul, at_softmax)
    return live


def moments(shape: ModelShape, *, batch: int, context: int, phase: str, dtype_bytes: int, kv_bytes: float,
            kv_total: float, kv_before: float, logits: str, masked: bool = False) -> list[Moment]:
    """The candidate peak moments of one forward pass (see the module docstring).

    prefill: the whole `context` in one pass, starting from an empty cache; decode: one new token per
    sequence with `context` tokens cached. kv_total: cache bytes at the end of the pass; kv_before:
    at its start. kv_bytes: bytes per cached number.
    """
    b, h, d, L = dtype_bytes, shape.hidden, shape.head_dim, shape.layers
    q_len = context if phase == "prefill" else 1
    kv_len = context if phase == "prefill" else context + 1
    T = batch * q_len                          # tokens in this forward pass
    H = T * h * b                              # one hidden-state tensor (residual stream, a norm's output)
    Q = T * shape.q_heads * d * b              # the queries
    K = T * shape.kv_heads * d * b             # this pass's new keys (or values)
    inter = T * shape.intermediate * b         # one MLP intermediate (gate, up, their product)
    rms = 8 * T * h                            # RMSNorm's fp32 temporaries and its output (beyond the input)
    layer_cache = kv_total / L                 # the last layer's keys and values after the pass
    before_last = kv_total - layer_cache + kv_before / L  # the cache before the last layer appends
    backend = sdpa_backend(shape, b, masked=masked)

    fixed = {"input ids": T * INT64,
             "RoPE cos/sin": 2 * q_len * d * b + q_len * INT64,  # position_ids have batch 1: shared by the rows
             "embedding output": H}                                     # inputs_embeds, kept by LlamaModel
    if masked:  # sliding window beyond its length: a bool mask (1, 1, q, kv), expanded over the batch
        fixed["sliding-window mask (bool)"] = q_len * kv_len
    if L > 1:
        fixed["layer input"] = H  # the last layer's input, held by LlamaModel's loop variable

    if backend == "math":
        attention = _math_sdpa(shape, batch, q_len, kv_len, b, causal=phase == "prefill")
    else:  # flash / efficient: the output, written head-interleaved, and the fp32 log-sum-exp per row and head
        attention = {"sdpa output": Q, "sdpa log-sum-exp": T * shape.q_heads * FP32}
    if masked:
        attention["float mask for the efficient kernel"] = batch * q_len * kv_len * b
        if shape.q_heads != shape.kv_heads:
            attention["repeat_kv: K, V at all query heads"] = 2 * batch * kv_len * shape.q_heads * d * b

    if phase == "prefill":  # cat([empty, k]) copies k and v into the cache: the originals are alive meanwhile
        grow = {}
    else:  # cat([old, new]): the last layer's old value tensor is alive while the grown one is written
        grow = {"cache append: the layer's old V": kv_before / L / 2}

    out = [
        Moment("input norm", before_last, {**fixed, "RMSNorm fp32 temporaries": rms}),
        Moment("RoPE on q", before_last, {**fixed, "normed input": H, "q (projection)": Q,
                                          "RoPE temporaries q*cos, rotated, x sin": 3 * Q, "k, v": 2 * K}),
        Moment("RoPE on k", before_last, {**fixed, "normed input": H, "q, rotated q": 2 * Q, "k (projection)": K,
                                          "RoPE temporaries k*cos, rotated, x sin": 3 * K, "v": K}),
        Moment("cache append", kv_total, {**fixed, "normed input": H, "rotated q": Q, "rotated k, v": 2 * K,
                                            **grow}),
        Moment(f"attention ({backend})", kv_total, {**fixed, "normed input": H, "rotated q": Q, **attention}),
        Moment("o_proj", kv_total, {**fixed, "normed input": H, "rotated q": Q, "attention output": Q,
                                    "o_proj output": H}),
        Moment("post-attention norm", kv_total, {**fixed, "residual": H, "RMSNorm fp32 temporaries": rms}),
        Moment("MLP product", kv_total, {**fixed, "residual": H, "normed input": H,
                                         "silu(gate), up, silu(gate)*up": 3 * inter}),
        Moment("MLP residual add", kv_total, {**fixed, "residual": H, "MLP output": H, "new residual": H}),
        Moment("final norm", kv_total, {**{k: v for k, v in fixed.items() if k != "layer input"},
                                        "last layer output": H, "RMSNorm fp32 temporaries": rms}),
    ]
    if backend == "math":  # the math output is (B, H, q, d): transformers' .contiguous() after transpose copies it
        out.append(Moment("attention output copy", kv_total, {**fixed, "normed input": H, "rotated q": Q,
                                                               "sdpa output + contiguous copy": 2 * Q}))
    rows = T if logits == "all" or phase == "decode" else batch
    after = {"input ids": T * INT64, "final normed": H, "logits": rows * shape.vocab * b}
    if rows != T:
        after["last position copy"] = batch * h * b
    out.append(Moment("logits", kv_total, after))
    return out
