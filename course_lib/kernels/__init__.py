"""Chapter 11 (planned): GPU kernels for quantized weights.

* ``dequant_bench``: what plain PyTorch does with 4-bit weights on a GPU (unpack, dequantize to fp16,
  then a cuBLAS matmul), timed against fp16 cuBLAS at Llama-3-8B's decode shapes. It is the baseline
  that only a fused kernel beats.
"""
