"""Mixed precision and GGUF (chapter 06).

Modules:

* ``kquants``  GGUF's block formats from their layouts: bytes per block and bits per weight of each type, a Q4_K
               super-block de-quantized from its 144 bytes (checked against the ``gguf`` package), and a simple
               Q4_K quantizer, which the ``gguf`` package lacks (it writes no k-quants).
* ``gguf_io``  a Llama model written to a GGUF file with the ``gguf`` package (metadata, the BPE tokenizer with
               its pre-tokenizer declared as "gpt-2", tensors renamed, q and k permuted for GGML's rotary
               layout, 2-D weights in F16/Q8_0/Q4_0/...), which transformers reads back.
"""
