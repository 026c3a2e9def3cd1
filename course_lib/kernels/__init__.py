"""Kernels and the hardware they run on: chapter 00's measurements, and chapter 11's.

* ``roofline``: FLOPs and bytes of a linear layer, arithmetic intensity, the ridge point.
* ``bench``: a Llama-7B linear layer from decode (1 token) to prefill (4096) against the roofline, and
  the bundled model's prefill against decode (``python -m course_lib.bench roofline|prefill-decode``).
* ``dequant_bench``: what plain PyTorch does with 4-bit weights on a GPU (unpack, dequantize to fp16,
  then a cuBLAS matmul), timed against fp16 cuBLAS at Llama-3-8B's decode shapes. It is the baseline
  that only a fused kernel beats.
* ``w4a16``: the fused 4-bit-weight matmul in Triton (GPTQ packing), a readable kernel and a tuned one
  whose speed tricks are switches; ``W4A16Linear`` picks it for decode and cuBLAS for long prefills;
  ``w4a16_h2``: its one-token form with the de-quantization on packed half2 instructions (inline PTX),
  and ``ptx_sim``, which interprets those instructions on a CPU to check the asm;
  ``w4a16_report``: the recorded benchmark read for the notebook.
* ``w4a16_bench``: that kernel against fp16 cuBLAS on a Llama-3-8B decode step with CUDA graphs
  (``python -m course_lib.bench w4a16``).
"""
