"""course_lib: the shared, tested code behind the course notebooks.

One module per idea. A notebook shows an idea in a few lines, then calls the course_lib version:
the same algorithm, complete and tested. The layout (README, "How the code is organised"):

    core/       the course's infrastructure: environment, profiles, canonical runs, tables, plots, results, timers
    lm/         the course's language model as the chapters use it: loading, tokens, blocks, training helpers,
                perplexity, lm-eval tasks
    pipeline/   how the bundled model was built: corpus, tokenizer, training run, card, baselines
    formats/ quant/ gptq/ awq/ prune/ distill/ kv/ attention/ kernels/ eval/ ...   one package per chapter or idea
    bench.py    `python -m course_lib.bench NAME`: runs the benchmark that a package owns
    exercises/  the exercise checks, one module per chapter

This front door gives the notebooks setup(), fmt() and print_table(); nothing inside course_lib imports it.
"""

from __future__ import annotations

from .core.env import apply_library_env as _apply_library_env
from .core.env import course_lib_version as _course_lib_version

# Library settings (offline hub, worker counts, ...) must be in place before transformers,
# huggingface_hub or gptqmodel are imported, so they are applied on import of course_lib.
_apply_library_env()

__version__ = _course_lib_version()

from .core.env import (CourseEnv, DeviceUnavailableError, choose_device, is_canonical, require_cuda,  # noqa: E402
                       seed_everything, setup)
from .core.profile import Profile, get_profile  # noqa: E402
from .core.results import load_result, save_result, show_result  # noqa: E402
from .core.tables import fmt, print_table, table_str  # noqa: E402

__all__ = [
    "CourseEnv",
    "DeviceUnavailableError",
    "Profile",
    "choose_device",
    "fmt",
    "get_profile",
    "is_canonical",
    "load_result",
    "print_table",
    "require_cuda",
    "save_result",
    "seed_everything",
    "setup",
    "show_result",
    "table_str",
]
