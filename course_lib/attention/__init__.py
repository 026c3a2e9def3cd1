"""Attention without the n×n matrix (chapter 10).

* ``reference``       naive attention (the n×n scores materialised) and its memory;
* ``online_softmax``  softmax in two passes and in one pass with a running max and sum;
* ``tiled``           FlashAttention's forward pass in plain PyTorch, block by block, and its backward pass;
* ``traffic``         the elements naive and tiled attention move through HBM, against the paper's bounds;
* ``seed``            seed 003's pseudo-code, transcribed, with its bugs switchable;
* ``triton_flash``    the same algorithm as a Triton kernel (CUDA GPUs);
* ``triton_hopper``   that kernel for Hopper (TMA loads, its own block shapes), with the switches the chapter prices;
* ``triton_train``    the forward kernel with the logsumexp, the backward kernels and an autograd function;
* ``training``        the course's attention inside transformers' models, and a training run against SDPA;
* ``bench``, ``bench_train``, ``report``  the GPU benchmarks (forward; forward and backward) against PyTorch's SDPA
  backends, and their reading.
"""
