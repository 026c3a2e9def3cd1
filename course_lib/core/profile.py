"""Workload profiles: one notebook, two sizes.

On the 2-core CI machine every notebook must finish in under 3 minutes, so it runs the ``small``
profile. On a GPU the same notebook can afford more (``large``). A notebook never hard-codes a
size; it asks the profile::

    n_samples = env.profile.pick(small=16, large=128)

The ``COURSE_PROFILE`` environment variable (or ``setup(profile=...)``) overrides the choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
PROFILES = ("small", "large")


@dataclass(frozen=True)
class Profile:
    """A named workload size; ``pick`` returns the value that belongs to it."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in PROFILES:
            raise ValueError(f"Unknown profile {self.name!r}; choose one of {', '.join(PROFILES)}.")

    def pick(self, small: T, large: T) -> T:
        return small if self.name == "small" else large

    @property
    def is_small(self) -> bool:
        return self.name == "small"


def get_profile(name: str | None = None, device=None) -> Profile:
    """The explicit name, else COURSE_PROFILE, else 'large' on CUDA and 'small' anywhere else."""
    name = name or os.environ.get("COURSE_PROFILE") or None
    if name is None:
        name = "large" if device is not None and getattr(device, "type", str(device)) == "cuda" else "small"
    return Profile(name.strip().lower())
