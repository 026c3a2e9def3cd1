"""course_lib: the shared, tested code behind the course notebooks.

One module per idea. A notebook shows an idea in a few lines, then calls the course_lib version:
the same algorithm, complete and tested.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from .env import apply_library_env as _apply_library_env

# Library settings (offline hub, worker counts, ...) must be in place before transformers,
# huggingface_hub or gptqmodel are imported, so they are applied on import of course_lib.
_apply_library_env()

try:
    __version__ = _metadata.version("course_lib")
except _metadata.PackageNotFoundError:  # used from a source tree without installing
    __version__ = "0+unknown"

from .env import (  # noqa: E402
    CourseEnv,
    DeviceUnavailableError,
    choose_device,
    is_canonical,
    require_cuda,
    seed_everything,
    setup,
)
from .profile import Profile, get_profile  # noqa: E402
from .results import load_result, save_result, show_result  # noqa: E402
from .tables import fmt, print_table, table_str  # noqa: E402

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
