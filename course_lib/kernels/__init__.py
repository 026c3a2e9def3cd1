"""Kernels and the hardware they run on: chapter 00's measurements, and chapter 11 (planned).

* ``roofline``: FLOPs and bytes of a linear layer, arithmetic intensity, the ridge point.
* ``bench``: a Llama-7B linear layer from decode (1 token) to prefill (4096) against the roofline, and
  the bundled model's prefill against decode (``python -m course_lib.bench roofline|prefill-decode``).
* ``dequant_bench``: what plain PyTorch does with 4-bit weights on a GPU (unpack, dequantize to fp16,
  then a cuBLAS matmul), timed against fp16 cuBLAS at Llama-3-8B's decode shapes. It is the baseline
  that only a fused kernel beats.
"""
