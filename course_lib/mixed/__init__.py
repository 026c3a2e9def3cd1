"""Mixed precision and GGUF (chapter 06).

Modules:

* ``kquants``  GGUF's block formats from their layouts: bytes per block and bits per weight of each type, a Q4_K
               super-block de-quantized from its 144 bytes (checked against the ``gguf`` package), and a simple
               Q4_K quantizer, which the ``gguf`` package lacks (it writes no k-quants).
"""
