"""Attention without the n×n matrix (chapter 10).

* ``reference``       naive attention (the n×n scores materialised) and its memory;
* ``online_softmax``  softmax in two passes and in one pass with a running max and sum;
* ``tiled``           FlashAttention's forward pass in plain PyTorch, block by block.
"""
