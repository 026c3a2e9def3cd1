"""Loading the course model (the bundled one by default) and walking its linear layers.

    model, tok = load_model()                          # data/course-model, offline
    model, tok = load_model("Qwen/Qwen2.5-0.5B")       # a hub model (online), or COURSE_MODEL=...
    model, tok = load_model("path/to/a/saved/model")   # any local directory
    model, tok = load_model("smollm2-135m")            # the real model, installed from a wheel (real_model.py)

One code path serves Llama, Qwen2, Mistral, OPT and GPT-2. GPT-2 stores its projections as
transformers' ``Conv1D`` with the weight transposed (in, out); ``linear_layers`` and
``weight_matrix`` hide that, so later chapters see every projection as an (out, in) matrix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.env import REPO_ROOT
from .errors import ModelUnavailableError
from .real_model import REAL_MODELS, cached_model_dir

BUNDLED_DIR = REPO_ROOT / "data" / "course-model"
BUNDLED_NAME = "course-model"
SUPPORTED = ("llama", "qwen2", "mistral", "opt", "gpt2")


def model_source(name: str | None = None) -> str:
    """Which model to load: the argument, else COURSE_MODEL, else the bundled model's directory.

    A name in REAL_MODELS ("smollm2-135m") resolves to its converted copy in the course cache
    (converted from the installed package on first use)."""
    name = name or os.environ.get("COURSE_MODEL") or BUNDLED_NAME
    if name == BUNDLED_NAME:
        if not (BUNDLED_DIR / "config.json").exists():
            raise ModelUnavailableError(f"The bundled model is missing from {BUNDLED_DIR}; restore data/ from the repository.")
        return str(BUNDLED_DIR)
    if name in REAL_MODELS:
        return str(cached_model_dir(name))
    return name


def _is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def _load(loader, source: str, **kwargs):
    """Call a from_pretrained, turning hub failures into one clear, fast error."""
    if _is_local(source):
        return loader.from_pretrained(str(Path(source).expanduser()), **kwargs)
    if source.startswith((".", "/", "~")):
        raise ModelUnavailableError(f"No model directory at {source!r}. Give a local directory or a hub id like 'Qwen/Qwen2.5-0.5B'.")
    try:  # the local Hugging Face cache first: works offline if the model was downloaded before
        return loader.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    hint = ("The course runs offline on its bundled model: unset COURSE_MODEL (or pass no name) to use it, "
            "or set COURSE_MODEL to a local directory that holds a saved model.")
    if offline:
        raise ModelUnavailableError(f"{source!r} is not in the local Hugging Face cache and the hub is offline "
                                    f"(HF_HUB_OFFLINE=1). {hint}") from None
    reachable, why = _hub_reachable()
    if not reachable:
        raise ModelUnavailableError(f"{source!r} is not in the local Hugging Face cache and the hub can't be "
                                    f"reached ({why}). {hint}") from None
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(f"Could not load {source!r} from the hub ({first}). {hint}") from None


def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """One TCP connection to the hub's endpoint, so that an offline machine fails in seconds
    instead of waiting through the hub client's retries."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True, ""
    except OSError as exc:
        return False, f"{url.hostname}:{port}: {exc.strerror or type(exc).__name__}"


def load_tokenizer(name: str | None = None):
    """The tokenizer of `name` (default: COURSE_MODEL, else the bundled model)."""
    from transformers import AutoTokenizer

    tok = _load(AutoTokenizer, model_source(name))
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # GPT-2 and OPT-style tokenizers have no pad token
    return tok


def load_model(name: str | None = None, *, device=None, dtype=None):
    """(model, tokenizer) in eval mode. dtype defaults to float32 on CPU and bfloat16 on CUDA."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..core.env import choose_device

    source = model_source(name)
    config = _load(AutoConfig, source)
    if config.model_type not in SUPPORTED:
        raise ModelUnavailableError(f"Architecture {config.model_type!r} is not one the course supports "
                                    f"({', '.join(SUPPORTED)}); pick a model of one of those families.")
    device = choose_device(device) if not isinstance(device, torch.device) else device
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = _load(AutoModelForCausalLM, source, dtype=dtype).to(device).eval()
    return model, load_tokenizer(source)


def linear_layers(model, *, skip: tuple[str, ...] = ("lm_head",)) -> dict:
    """Every nn.Linear and GPT-2 Conv1D in `model` by name, except names ending in `skip`."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return {name: m for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, Conv1D)) and not name.endswith(skip)}


def weight_matrix(module):
    """The layer's weight as an (out_features, in_features) tensor view, whatever its layout."""
    from transformers.pytorch_utils import Conv1D

    return module.weight.t() if isinstance(module, Conv1D) else module.weight


@dataclass(frozen=True)
class ModelSummary:
    architecture: str
    parameters: int
    bytes: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    vocab: int
    max_positions: int

    def rows(self) -> list[dict]:
        return [{"property": k, "value": v} for k, v in self.__dict__.items()]


def summarize(model) -> ModelSummary:
    """Size and shape of a causal LM, read from its config and parameters."""
    c = model.config
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None)
    return ModelSummary(
        architecture=type(model).__name__,
        parameters=sum(p.numel() for p in model.parameters()),
        bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        layers=getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None),
        hidden=getattr(c, "hidden_size", None) or getattr(c, "n_embd", None),
        heads=heads,
        kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        vocab=c.vocab_size,
        max_positions=getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None),
    )


def tiny_model(architecture: str, *, vocab_size: int = 4096, seed: int = 0):
    """A small randomly initialised model of a supported architecture, for tests (no download)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    configs = {
        "llama": lambda: LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=256, **common),
        "qwen2": lambda: Qwen2Config(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=256, **common),
        "mistral": lambda: MistralConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         sliding_window=None, **common),
        "opt": lambda: OPTConfig(hidden_size=128, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4,
                                 max_position_embeddings=256, word_embed_proj_dim=128, **common),
        "gpt2": lambda: GPT2Config(n_embd=128, n_inner=256, n_layer=2, n_head=4, n_positions=256, **common),
    }
    if architecture not in configs:
        raise ValueError(f"Unknown architecture {architecture!r}; choose one of {', '.join(configs)}.")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(configs[architecture]()).eval()
