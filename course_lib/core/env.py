"""The course environment: library settings, seeds, threads, device choice and a short report.

Every environment variable the course or its libraries read is set here, in one place:

* ``LIBRARY_ENV`` is applied (without overriding the user) when ``course_lib`` is imported, so it
  reaches transformers, huggingface_hub, gptqmodel and tokenizers before they are imported.
* ``CANONICAL_ENV`` is the pinned environment of the canonical notebook run (see
  ``course_lib.core.canonical``): one thread, fixed hash seed, no visible GPU, no progress bars.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # <repo>: course_lib/core/env.py

# Settings the course reads itself.
COURSE_SETTINGS = {
    "COURSE_DEVICE": "auto, cpu, cuda, cuda:N or mps (default auto)",
    "COURSE_PROFILE": "small or large workload (default: small on CPU, large on CUDA)",
    "COURSE_MODEL": "smollm2-135m (the real model), a hub id or a local directory instead of the bundled model",
    "COURSE_CACHE": "where the real model's converted copy lives (default ~/.cache/llm-course)",
    "COURSE_CANONICAL": "1 inside the canonical run that produces the stored outputs",
}

# Settings for the libraries, applied at import unless the user already set them.
LIBRARY_ENV = {
    # No downloads at run time: the course runs on its bundled model and data.
    # (Turned off automatically when COURSE_MODEL names a hub model, see _hub_offline_default.)
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # gptqmodel sizes a CPU worker pool at import; on a 2-core machine it needs this set.
    "GPTQMODEL_CPU_WORKERS": "2",
    # tokenizers warns (and can deadlock) when a process forks after using its thread pool.
    "TOKENIZERS_PARALLELISM": "false",
    # gptqmodel's logging library draws live progress bars in Jupyter, which nbval cannot replay.
    "LOGBAR_DISABLE_NOTEBOOK_DETECTION": "1",
}

# The canonical run: what makes stored outputs reproducible.
CANONICAL_ENV = {
    "COURSE_CANONICAL": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


def _looks_like_hub_id(name: str) -> bool:
    return "/" in name and not Path(name).expanduser().exists() and not name.startswith((".", "/", "~"))


def apply_library_env() -> None:
    """Set LIBRARY_ENV defaults; a hub model named in COURSE_MODEL switches the hub back online."""
    env = dict(LIBRARY_ENV)
    if _looks_like_hub_id(os.environ.get("COURSE_MODEL", "")):
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            env[key] = "0"
    for key, value in env.items():
        os.environ.setdefault(key, value)
    quiet_library_loggers()


# Loggers that print harmless import-time noise into notebooks, with machine-specific paths:
# transformers imports torchao whenever it loads a model; torchao then warns about its compiled
# extensions built for other Python/CUDA versions (unused on CPU), and torch about torchao's enums.
# bitsandbytes' CPU backend warns on import about an optional kernel package.
# bitsandbytes.autograd: "MatMul8bitLt: inputs will be cast from float32 to float16", on every int8 matmul
NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions")


def quiet_library_loggers() -> None:
    """Show only errors from NOISY_LOGGERS (set before the libraries are imported)."""
    import logging

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_loggers(*names: str):
    """Show only errors from the named loggers inside the block; their levels are restored after."""
    import logging

    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run the block with `n` intra-op torch threads (restored after): CPU timings that a notebook asserts on are
    taken single-threaded, as in the canonical run, so a 16-core GPU host or a busy laptop gives the same ranking."""
    import torch

    if n < 1:
        raise ValueError(f"torch_threads needs n >= 1, got {n}.")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_canonical() -> bool:
    """True inside the canonical run that produces the stored notebook outputs."""
    return os.environ.get("COURSE_CANONICAL") == "1"


class DeviceUnavailableError(RuntimeError):
    """A device was asked for that this machine does not have."""


def available_devices() -> list[str]:
    """Device names usable here, best first."""
    import torch

    names = []
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names + ["cpu"]


def choose_device(name: str | None = None):
    """Resolve 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' to a torch.device, with clear errors."""
    import torch

    name = (name or os.environ.get("COURSE_DEVICE") or "auto").strip().lower()
    here = available_devices()
    if name == "auto":
        return torch.device(here[0])
    kind = name.split(":")[0]
    if kind not in {"cpu", "cuda", "mps"}:
        raise ValueError(
            f"Unknown device {name!r}. Use 'auto' or one of the devices available here: {', '.join(here)}."
        )
    if name not in here:
        hint = ""
        if kind == "cuda":
            hint = (
                f" torch {torch.__version__} ({torch.version.cuda or 'CPU-only'} build) sees no such CUDA "
                "device. On Colab choose Runtime > Change runtime type > GPU; elsewhere install a CUDA build of torch."
            )
        raise DeviceUnavailableError(
            f"Device {name!r} is not available on this machine.{hint} Available: {', '.join(here)}."
        )
    return torch.device(name)


def require_cuda(what: str = "This cell") -> None:
    """Raise a clear error when CUDA is missing, for GPU-only cells and functions."""
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"{what} needs an NVIDIA GPU with CUDA, and torch sees none here. On CPU, the notebook shows "
            "the result recorded on the course's GPU machine (an H200; earlier, an H100) instead. On Colab: Runtime > Change runtime type > GPU."
        )


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pinned_versions(path: Path | None = None) -> dict[str, str]:
    """The exact versions in constraints.txt, by lower-case package name."""
    path = path or REPO_ROOT / "constraints.txt"
    pins: dict[str, str] = {}
    if not path.exists():
        return pins
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def version_drift(packages: tuple[str, ...] = ("torch", "transformers", "numpy")) -> dict[str, tuple[str, str]]:
    """Packages whose installed version differs from the pin: {name: (installed, pinned)}."""
    pins = pinned_versions()
    drift = {}
    for name in packages:
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        pinned = pins.get(name)
        if pinned and installed.split("+")[0] != pinned.split("+")[0]:
            drift[name] = (installed, pinned)
    return drift


@dataclass(frozen=True)
class CourseEnv:
    """What `setup()` decided: pass it around instead of re-deciding in every cell."""

    device: "object"  # torch.device
    profile: "object"  # course_lib.core.profile.Profile
    seed: int
    threads: int
    canonical: bool

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def setup(
    device: str | None = None,
    *,
    seed: int = 0,
    threads: int | None = None,
    profile: str | None = None,
    report: bool = True,
) -> CourseEnv:
    """Prepare a notebook: seeds, threads, device, workload profile, plot style; print a short report.

    device:  'auto' (default; or the COURSE_DEVICE variable), 'cpu', 'cuda', 'cuda:N' or 'mps'.
    threads: torch intra-op threads; the canonical run forces 1 so stored numbers are reproducible.
    profile: 'small' or 'large' (default: COURSE_PROFILE, else large on CUDA and small otherwise).
    """
    import torch

    from .plotting import use_style
    from .profile import get_profile

    apply_library_env()
    dev = choose_device(device)
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}.")
    canonical = is_canonical()
    if canonical:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    seed_everything(seed)
    use_style()
    env = CourseEnv(
        device=dev,
        profile=get_profile(profile, dev),
        seed=seed,
        threads=torch.get_num_threads(),
        canonical=canonical,
    )
    if report:
        print(environment_report(env))
    return env


def device_description(device) -> str:
    """A human name for a torch.device, e.g. 'cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)'."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    if device.type == "cpu":
        return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    return device.type


def course_lib_version() -> str:
    """The installed course_lib's version; "0+unknown" in a source tree that was never installed."""
    try:
        return metadata.version("course_lib")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def environment_report(env: CourseEnv) -> str:
    """A few lines that tell an instructor what this kernel is running on."""
    import torch


    def v(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    lines = [
        f"course_lib   {course_lib_version()}",
        f"python       {platform.python_version()} ({Path(sys.executable).parent.parent.name})",
        f"torch        {torch.__version__}" + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ""),
        f"transformers {v('transformers')}",
        f"device       {device_description(env.device)}",
        f"threads      {env.threads}",
        f"profile      {env.profile.name}",
        f"seed         {env.seed}" + ("  (canonical run)" if env.canonical else ""),
    ]
    for name, (installed, pinned) in version_drift().items():
        lines.append(f"note: {name} {installed} differs from the pinned {pinned}; numbers may differ from the stored outputs")
    return "\n".join(lines)
