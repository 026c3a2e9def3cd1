"""Mixed precision and GGUF (chapter 06).

Modules:

* ``kquants``  GGUF's block formats from their layouts: bytes per block and bits per weight of each type, and
               a Q4_K super-block de-quantized from its 144 bytes, checked against the ``gguf`` package.
"""
