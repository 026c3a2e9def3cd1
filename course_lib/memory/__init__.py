"""How much GPU memory does inference need? (chapter 11)

Modules:

* ``shapes``       a llama/mistral/qwen2 model's shapes, its parameter count by formula, and the bytes
                   of its weights in a plain dtype or grouped integer quantization (GPTQ-style, mixed bits);
* ``activations``  the tensors alive at each moment of a transformers forward pass (prefill, decode);
* ``estimate``     weights + KV cache + activations + cuBLAS workspace (+ the CUDA context): ``estimate()``;
* ``fits``         "does it fit?": the longest context per model, precision and card, and the seeds' claims;
* ``measure``      the allocator's real peak on a GPU against the estimate (``python -m course_lib.memory.measure``),
                   and the parts that a CPU can check exactly (parameter and cache bytes).
"""
