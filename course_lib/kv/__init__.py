"""The KV cache, built from scratch (chapter 09).

Modules, one idea each:

* ``attention``  RoPE, the causal mask aligned bottom-right, GQA's head mapping, and the seed's
                 ``AttentionWithKVCache`` rewritten correctly;
* ``decoder``    a from-scratch Llama-style decoder that runs on a transformers model's weights
                 with the course's own cache, and the generation loop;
* ``gqa``        converting a model's attention to fewer KV heads by mean-pooling;
* ``quant``      FP8, INT8 and KIVI-style 2/4-bit cache quantization with byte accounting;
* ``sizes``      the cache-size formula applied to published model configurations;
* ``static``     a preallocated cache written in place, what CUDA graphs need;
* ``paged``      a paged cache: blocks, block tables, slot mapping, reference counts, copy-on-write;
* ``buddy``      the buddy allocator that placed contiguous caches before paging;
* ``serving_sim`` contiguous preallocation against paging on a realistic mix of requests, offline or
                 as a Poisson trace with a roofline step time;
* ``bench``      decode time per step (``python -m course_lib.bench kv-decode``) and straight-line fits.
"""
