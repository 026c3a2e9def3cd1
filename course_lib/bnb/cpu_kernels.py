"""A guard against bitsandbytes 0.50.2's native CPU ``dequantize_4bit`` where it computes wrong values.

On some CPUs (seen on an Intel Xeon with AVX-512 FP16/BF16 and AMX, where torch reports the "AVX512" capability) the
native kernel that bitsandbytes registers for CPU de-quantizes NF4/FP4 blocks differently from bitsandbytes' own
generic implementation (``backends/default/ops.py``): up to 0.04 on weights of size 0.02, enough to wreck a merged
QLoRA model. The course's NF4 equals the generic implementation exactly, on every CPU. ``ensure_reference_cpu_kernel``
probes the native kernel once against the generic one on a small tensor and, only where they disagree, registers the
generic one for CPU tensors (bitsandbytes' own ``register_kernel``), so bitsandbytes, transformers and peft all
de-quantize correctly. ``STATUS`` says what it found.
"""

from __future__ import annotations

STATUS: dict = {}


def ensure_reference_cpu_kernel() -> dict:
    """Probe once; override bitsandbytes' CPU dequantize_4bit with its generic kernel if the two disagree."""
    if STATUS:
        return STATUS
    from ..core.optional import missing

    if missing("bitsandbytes"):
        STATUS.update(checked=False, reason="bitsandbytes is not installed")
        return STATUS
    import warnings

    import torch
    import bitsandbytes.functional as F
    from bitsandbytes._ops import register_kernel
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    # bitsandbytes wraps it in torch.compile, which recompiles for every new shape (and warns when it gives up):
    # the eager function underneath computes the same elementwise lookup and product
    compute = getattr(_dequantize_4bit_compute, "__wrapped__", _dequantize_4bit_compute)

    def generic(A, absmax, blocksize, quant_type, shape, dtype):
        if A.dtype != torch.uint8:
            A = A.view(torch.uint8)
        return compute(A.reshape(-1), absmax, _get_4bit_code(quant_type, A.device), blocksize, shape, dtype)

    largest = 0.0
    for shape in ((64, 128), (96, 160), (7, 64)):  # the wrong results depend on the shape (160 columns: wrong)
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.02
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
        native = F.dequantize_4bit(packed, state)
        reference = generic(packed, state.absmax, 64, "nf4", w.shape, torch.float32)
        largest = max(largest, float((native - reference).abs().max()))
    differs = largest > 0
    if differs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns that a kernel is overridden: that is the point
            register_kernel("bitsandbytes::dequantize_4bit", "cpu")(generic)
    STATUS.update(checked=True, native_differs=differs, largest_difference=largest, overridden=differs)
    return STATUS


def undo_cpu_packing(model) -> int:
    """Put every 4-bit weight that bitsandbytes repacked for its CPU inference kernel back into the standard layout.

    On a CPU with AVX-512 BF16, ``Linear4bit``'s first forward in eval mode repacks its weight (and marks the quant
    state ``packing_format_for_cpu``); its training-mode forward does not undo that and then computes with the wrong
    layout. Call this before training a model that has been evaluated. Returns how many weights were converted."""
    converted = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            import bitsandbytes.functional as F

            weight.data, weight.quant_state = F._convert_weight_packed_for_cpu_inverse(weight.data, state)
            converted += 1
    return converted
