"""Chapter 05: bitsandbytes' methods written from scratch, the library itself, and QLoRA.

    int8        LLM.int8(): vector-wise int8, int32 accumulation, the outlier decomposition (threshold 6)
    nf4         NF4 and FP4: blockwise absmax, 16-value codes, nibble packing, double quantization
    linear4bit  a readable Linear4bit that stores packed NF4 and de-quantizes in its forward
    library     bitsandbytes and transformers' BitsAndBytesConfig, every choice stated; comparisons
    qlora       QLoRA / LoRA / full fine-tuning on a held-out work (peft), merging adapters back
    memory      fine-tuning memory by formula and measured (weights, adapters, gradients, optimizer, activations)
    teach       the chapter's measurements: outliers per layer, how each 4-bit code fits real weights
    bench       `python -m course_lib.bench bnb`: memory, perplexity, time per token; fine-tuning with memory

bitsandbytes needs no calibration data: each weight is quantized from its own values while the model loads.
"""

from .cpu_kernels import ensure_reference_cpu_kernel as _ensure_reference_cpu_kernel

_ensure_reference_cpu_kernel()  # bitsandbytes' native CPU dequantize_4bit is wrong on some CPUs (cpu_kernels.py)
