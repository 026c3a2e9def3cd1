"""Model cards side by side: the bundled model beside the real one (or any models).

    print_table(card_rows({"course-model": small, "smollm2-135m": real}))
    python -m course_lib.lm.card                      # the same, from the command line

Bytes are counted per parameter (tied embeddings once) at each storage width; the 4-bit row counts
the codes alone, before any scales (chapter 02 adds those: 4.5 to 5 bits per weight in practice).
"""

from __future__ import annotations

import sys

from .models import BUNDLED_NAME, load_model, summarize
from .real_model import REAL_MODELS

BUNDLED_WEIGHTS = "float, trained by the course"
WIDTHS = (("fp32", 4.0), ("bf16 / fp16", 2.0), ("int8", 1.0), ("int4 (codes only)", 0.5))


def weights_origin(name: str) -> str:
    if name in REAL_MODELS:
        return REAL_MODELS[name].weights
    return BUNDLED_WEIGHTS if name == BUNDLED_NAME else "as loaded"


def card(model, name: str) -> dict:
    """One model's card: shape, attention layout, size at each width, context and where its weights come from."""
    s, c = summarize(model), model.config
    head_dim = getattr(c, "head_dim", None) or s.hidden // s.heads
    out = {
        "architecture": s.architecture,
        "parameters (M)": s.parameters / 1e6,
        "layers": s.layers,
        "hidden": s.hidden,
        "MLP width": getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or getattr(c, "ffn_dim", None),
        "query heads": s.heads,
        "key/value heads": s.kv_heads,
        "GQA ratio (query per kv head)": s.heads // s.kv_heads,
        "head_dim": head_dim,
        "vocabulary": s.vocab,
        "context (tokens)": s.max_positions,
        "tied embeddings": bool(getattr(c, "tie_word_embeddings", False)),
    }
    for label, nbytes in WIDTHS:
        out[f"MB in {label}"] = s.parameters * nbytes / 1e6
    out["weights"] = weights_origin(name)
    if name in REAL_MODELS:
        out["licence"] = REAL_MODELS[name].licence
    else:
        out["licence"] = "the course's (MIT); text public domain" if name == BUNDLED_NAME else "see its model card"
    return out


def card_rows(models: dict) -> list[dict]:
    """Rows 'property | name1 | name2 ...' for models given as {name: model}."""
    cards = {name: card(m, name) for name, m in models.items()}
    keys = list(next(iter(cards.values())))
    return [{"property": k, **{name: cards[name][k] for name in cards}} for k in keys]


def main(argv: list[str] | None = None) -> int:
    from ..core.tables import print_table

    names = (argv if argv is not None else sys.argv[1:]) or [BUNDLED_NAME, *REAL_MODELS]
    print_table(card_rows({name: load_model(name, device="cpu")[0] for name in names}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
