"""Importance matrices (llama-imatrix's output) for quantizing: its GGUF format and the older .dat one."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .errors import QuantizeError
from .gguf import is_gguf


def read_imatrix(path: "str | os.PathLike") -> dict:
    """An importance matrix file (llama-imatrix's GGUF format or its older .dat format) as
    {tensor name: float32 array of mean squared activations}, the values llama-quantize uses."""
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(f"imatrix file not found: {path}")
    entries = _read_gguf_imatrix(path) if is_gguf(path) else _read_legacy_imatrix(path)
    if not entries:
        raise QuantizeError(f"no importance matrix entries in {path}")
    return entries


def _read_gguf_imatrix(path: Path) -> dict:
    """GGUF imatrix: per tensor `<name>.in_sum2` (sums of squares) and `<name>.counts` (one count
    per expert); the mean is sum / count, 1 where a count is 0 (an expert never routed to)."""
    from gguf import GGUFReader

    arrays = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in GGUFReader(path).tensors}
    entries = {}
    for key, sums in arrays.items():
        if not key.endswith(".in_sum2"):
            continue
        name = key[:-len(".in_sum2")]
        counts = arrays.get(name + ".counts")
        if counts is None:
            raise QuantizeError(f"{path}: {name} has sums but no counts")
        per_expert = sums.reshape(len(counts), -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            means = np.where(counts[:, None] > 0, per_expert / counts[:, None], 1.0)
        entries[name] = np.ascontiguousarray(means.reshape(-1), dtype=np.float32)
    return entries


def _read_legacy_imatrix(path: Path) -> dict:
    """The .dat format: int32 count, then per entry int32 name length, name, int32 calls,
    int32 values, float32 values (sums already scaled by calls; divided by calls here)."""
    data = path.read_bytes()
    try:
        (n_entries,), offset = struct.unpack_from("<i", data, 0), 4
        entries = {}
        for _ in range(n_entries):
            (name_len,) = struct.unpack_from("<i", data, offset)
            name = data[offset + 4:offset + 4 + name_len].decode("utf-8")
            offset += 4 + name_len
            n_calls, n_values = struct.unpack_from("<ii", data, offset)
            offset += 8
            values = np.frombuffer(data, dtype="<f4", count=n_values, offset=offset).astype(np.float32)
            offset += 4 * n_values
            entries[name] = values / n_calls if n_calls > 0 else values
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise QuantizeError(f"{path} is neither a GGUF nor a legacy imatrix file ({e})") from None
    return entries
