"""The model step of a serving engine: many sequences, each at its own position, in one forward pass.

A step's batch is *flat*, as in vLLM: the new tokens of every scheduled sequence are concatenated
into one (N, D) tensor. A sequence in prefill contributes a chunk of its prompt, a decoding
sequence one token. Everything that is per token (embeddings, norms, the q/k/v/o projections, the
MLP) runs on all N tokens at once, which is where batching pays: one weight read for N tokens.

Only attention is per sequence. Each new token's key and value are written into the paged pool at
its *slot* (``block_table[t // B] · B + t % B``, chapter 09), and each sequence's queries attend over
the keys that its block table names. Sequences are padded to the longest query chunk and the longest
block table of the step, with a mask that hides the padding and the future (bottom-right causal).

The pool can hold FP8 (E4M3) keys and values: written as ``x / scale`` rounded to FP8 (one scale per
tensor, 1.0 by default, as vLLM's ``--kv-cache-dtype fp8`` without calibrated scales), read back
as ``fp8 · scale`` in the model's dtype. Half the bytes of BF16 per token, so twice the tokens fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "qwen2", "mistral")
KV_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
             "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn}
FP8_MAX = 448.0  # the largest finite E4M3 value


@dataclass
class StepBatch:
    """What the runner needs for one step, built by the scheduler (all on the CPU)."""

    token_ids: list[int]          # the N new tokens, sequence after sequence
    positions: list[int]          # their positions in their sequences
    slots: list[int]              # where their keys and values go in the pool
    q_lens: list[int]             # new tokens per sequence
    ctx_lens: list[int]           # tokens of each sequence in the cache after this step
    block_tables: list[list[int]]  # each sequence's physical blocks
    want_logits: list[bool]       # whether the sequence samples a token after this step


class PagedKVPool:
    """Keys and values of every layer in blocks: k[layer] is (num_blocks, block_size, n_kv_heads, head_dim)."""

    def __init__(self, num_blocks: int, block_size: int, n_layers: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device, scale: float = 1.0) -> None:
        shape = (num_blocks, block_size, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.block_size, self.dtype, self.scale = block_size, dtype, float(scale)
        self.fp8 = dtype == torch.float8_e4m3fn

    @staticmethod
    def bytes_per_block(block_size: int, n_layers: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """K and V of one block in every layer: 2 · layers · B · H_kv · d · bytes per element."""
        return 2 * n_layers * block_size * n_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store (N, H_kv, d) keys and values at their slots of the flattened pool."""
        for pool, x in ((self.k[layer], k), (self.v[layer], v)):
            if self.fp8:
                x = (x.float() / self.scale).clamp(-FP8_MAX, FP8_MAX)
            pool.view(-1, *pool.shape[2:])[slots] = x.to(self.dtype)

    def read(self, layer: int, tables: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, H_kv, T, d) keys and values of S sequences through their (S, max_blocks) block tables."""
        out = []
        for pool in (self.k[layer], self.v[layer]):
            x = pool[tables].flatten(1, 2).transpose(1, 2)  # (S, maxb, B, H, d) -> (S, H, T, d)
            x = x.to(dtype) * self.scale if self.fp8 else x.to(dtype)
            out.append(x)
        return out[0], out[1]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class ModelRunner:
    """Runs a transformers Llama/Qwen2/Mistral model's own modules on a flat batch with a paged pool."""

    def __init__(self, model, *, num_blocks: int, block_size: int, kv_dtype: str = "auto",
                 kv_scale: float = 1.0, cuda_graphs: bool = False, max_model_len: int | None = None,
                 max_batch: int = 256) -> None:
        c = model.config
        if c.model_type not in SUPPORTED:
            raise ValueError(f"The course engine runs Llama-style decoders ({', '.join(SUPPORTED)}); this model is "
                             f"{c.model_type!r}. Serve it with transformers' generate, or add its attention here.")
        if getattr(c, "sliding_window", None) and c.sliding_window < c.max_position_embeddings:
            raise ValueError(f"This model uses a {c.sliding_window}-token sliding window, which the engine does not "
                             "implement; load it with sliding_window=None.")
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}.")
        self.model = model.eval()
        inner = model.model
        self.layers, self.rotary = inner.layers, inner.rotary_emb
        attn = inner.layers[0].self_attn
        self.n_heads, self.n_kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.device, self.dtype = next(model.parameters()).device, next(model.parameters()).dtype
        self.kv_dtype = KV_DTYPES[kv_dtype] or self.dtype
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs needs the model on a CUDA device; leave it off on the CPU.")
        self.cuda_graphs = cuda_graphs
        # with CUDA graphs, one extra block is scratch space for the padding rows of a graph's batch
        self.scratch_block = num_blocks if cuda_graphs else None
        self.pool = PagedKVPool(num_blocks + int(cuda_graphs), block_size, len(self.layers), self.n_kv_heads,
                                self.head_dim, self.kv_dtype, self.device, kv_scale)
        self.max_width = -(-(max_model_len or c.max_position_embeddings) // block_size)
        self.max_batch = max_batch
        self._graphs: dict[tuple[int, int], tuple] = {}
        self._graph_pool = None
        self.graph_steps = self.eager_steps = 0

    def _tensor(self, values, dtype=torch.long) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

    def _attention_inputs(self, b: StepBatch):
        """Padding maps and the mask shared by every layer of the step."""
        n_seq, q_max = len(b.q_lens), max(b.q_lens)
        width = max(len(t) for t in b.block_tables)
        tables = torch.zeros(n_seq, width, dtype=torch.long)
        for i, t in enumerate(b.block_tables):
            tables[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        q_lens, ctx = torch.tensor(b.q_lens), torch.tensor(b.ctx_lens)
        # row i of the flat batch -> (sequence, query index) of the padded (S, q_max) layout
        seq_of = torch.repeat_interleave(torch.arange(n_seq), q_lens)
        starts = torch.cumsum(q_lens, 0) - q_lens
        q_index = torch.arange(len(b.token_ids)) - starts[seq_of]
        # query j of sequence s is token ctx_s - q_len_s + j; it sees keys 0 .. that token (and none past ctx_s)
        token = ctx[:, None] - q_lens[:, None] + torch.arange(q_max)[None, :]
        keys = torch.arange(width * self.pool.block_size)
        mask = keys[None, None, :] <= token[:, :, None]                     # (S, q_max, T)
        mask |= (torch.arange(q_max)[None, :] >= q_lens[:, None])[:, :, None]  # padding queries: see all (discarded)
        return (tables.to(self.device), seq_of.to(self.device), q_index.to(self.device),
                mask[:, None].to(self.device), n_seq, q_max)

    @torch.inference_mode()
    def step(self, b: StepBatch) -> torch.Tensor:
        """Run the step; returns float32 logits (n_sampling_sequences, vocab) for the sequences that sample."""
        if all(n == 1 for n in b.q_lens) and all(b.want_logits):
            return self._decode(b)
        self.eager_steps += 1
        ids, pos = self._tensor(b.token_ids), self._tensor(b.positions)
        slots = self._tensor(b.slots)
        tables, seq_of, q_index, mask, n_seq, q_max = self._attention_inputs(b)
        h = self.model.model.embed_tokens(ids)[None]                  # (1, N, D)
        cos, sin = self.rotary(h, pos[None])                          # (1, N, d)
        cos, sin = cos[0, :, None], sin[0, :, None]                   # (N, 1, d)
        n = len(b.token_ids)
        for layer_idx, layer in enumerate(self.layers):
            a = layer.self_attn
            x = layer.input_layernorm(h)[0]                          # (N, D)
            q = a.q_proj(x).view(n, self.n_heads, self.head_dim)
            k = a.k_proj(x).view(n, self.n_kv_heads, self.head_dim)
            v = a.v_proj(x).view(n, self.n_kv_heads, self.head_dim)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            self.pool.write(layer_idx, slots, k, v)
            keys, values = self.pool.read(layer_idx, tables, q.dtype)   # (S, H_kv, T, d), from the blocks
            qp = q.new_zeros(n_seq, q_max, self.n_heads, self.head_dim)
            qp[seq_of, q_index] = q
            out = F.scaled_dot_product_attention(qp.transpose(1, 2), keys, values, attn_mask=mask,
                                                 scale=self.scaling, enable_gqa=True)  # (S, H, q_max, d)
            out = out.transpose(1, 2)[seq_of, q_index].reshape(n, -1)
            h = h + a.o_proj(out)[None]
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        last = torch.cumsum(torch.tensor(b.q_lens), 0) - 1
        rows = last[torch.tensor(b.want_logits, dtype=torch.bool)].to(self.device)
        h = self.model.model.norm(h[0, rows])
        return self.model.lm_head(h).float()

    # ---- decode-only steps: one new token per sequence, no padding of queries -------------------------
    def _decode_forward(self, ids, pos, slots, tables, ctx) -> torch.Tensor:
        """Logits (B, V) for B sequences that each add one token; keys past a sequence's ctx are masked."""
        n = ids.shape[0]
        h = self.model.model.embed_tokens(ids)[None]
        cos, sin = self.rotary(h, pos[None])
        cos, sin = cos[0, :, None], sin[0, :, None]
        keys_pos = torch.arange(tables.shape[1] * self.pool.block_size, device=ids.device)
        mask = (keys_pos[None, :] < ctx[:, None])[:, None, None]       # (B, 1, 1, T)
        for layer_idx, layer in enumerate(self.layers):
            a = layer.self_attn
            x = layer.input_layernorm(h)[0]
            q = a.q_proj(x).view(n, self.n_heads, self.head_dim)
            k = a.k_proj(x).view(n, self.n_kv_heads, self.head_dim)
            v = a.v_proj(x).view(n, self.n_kv_heads, self.head_dim)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            self.pool.write(layer_idx, slots, k, v)
            keys, values = self.pool.read(layer_idx, tables, q.dtype)
            out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask, scale=self.scaling,
                                                 enable_gqa=True)      # (B, H, 1, d)
            h = h + a.o_proj(out.reshape(1, n, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.model.lm_head(self.model.model.norm(h[0])).float()

    def _decode(self, b: StepBatch) -> torch.Tensor:
        width = max(len(t) for t in b.block_tables)
        n = len(b.token_ids)
        if not self.cuda_graphs or n > self.max_batch or width > self.max_width:
            self.eager_steps += 1
            tables = torch.zeros(n, width, dtype=torch.long)
            for i, t in enumerate(b.block_tables):
                tables[i, :len(t)] = torch.tensor(t, dtype=torch.long)
            return self._decode_forward(self._tensor(b.token_ids), self._tensor(b.positions), self._tensor(b.slots),
                                        tables.to(self.device), self._tensor(b.ctx_lens))
        # CUDA graphs: the batch and the block-table width padded up to a power of two, one graph per pair
        self.graph_steps += 1
        size = (1 << (n - 1).bit_length(), min(1 << (width - 1).bit_length(), self.max_width))
        graph = self._graphs.get(size) or self._capture(*size)
        g, (ids, pos, slots, tables, ctx), out = graph
        scratch = self.scratch_block * self.pool.block_size
        ids.zero_(), pos.zero_(), slots.fill_(scratch), tables.fill_(self.scratch_block), ctx.fill_(1)
        host = torch.full((size[0], size[1]), self.scratch_block, dtype=torch.long)
        for i, t in enumerate(b.block_tables):
            host[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        tables.copy_(host, non_blocking=True)
        ids[:n].copy_(torch.tensor(b.token_ids), non_blocking=True)
        pos[:n].copy_(torch.tensor(b.positions), non_blocking=True)
        slots[:n].copy_(torch.tensor(b.slots), non_blocking=True)
        ctx[:n].copy_(torch.tensor(b.ctx_lens), non_blocking=True)
        g.replay()
        return out[:n]

    def _capture(self, batch: int, width: int) -> tuple:
        """Record one decode step of (batch, width) into a CUDA graph, on static input buffers."""
        dev = self.device
        inputs = (torch.zeros(batch, dtype=torch.long, device=dev), torch.zeros(batch, dtype=torch.long, device=dev),
                  torch.full((batch,), self.scratch_block * self.pool.block_size, dtype=torch.long, device=dev),
                  torch.full((batch, width), self.scratch_block, dtype=torch.long, device=dev),
                  torch.ones(batch, dtype=torch.long, device=dev))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: kernels chosen, workspaces allocated
            for _ in range(2):
                self._decode_forward(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self._graph_pool):
            out = self._decode_forward(*inputs)
        self._graphs[(batch, width)] = (g, inputs, out)
        return self._graphs[(batch, width)]
