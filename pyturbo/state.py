"""Saved context state: a header saying what the state belongs to, then llama.cpp's own bytes.

    data = ctx.save_state()              # bytes; ctx.save_state("chat.state") writes a file
    other.load_state(data)               # StateError unless `other` can take it

llama.cpp's state checks only the layer count, the cell count and each layer's K/V
type and row size. It would load a cache written by another model of the same
shape, or one stored under other K/V transforms (pyturbo.kv_transform), and then
answer wrongly without a word. So pyturbo writes a header first: the model's
fingerprint, the cache types, the transforms, n_ctx, the sliding-window setting and
the tokens in the cache. Loading refuses any mismatch with a StateError naming it.

The file layout: MAGIC, a little-endian u32 format version, a u32 length, that many
bytes of UTF-8 JSON (the header), then llama.cpp's state bytes to the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from . import _native
from ._native import ffi, llama
from .errors import ContextError, StateError
from .gguf import read_gguf_header
from .rpc import WorkerHealth

MAGIC = b"PYTURBO-STATE\n"
FORMAT_VERSION = 1
# Bytes of each tensor's data that go into a model fingerprint: enough to tell apart two
# fine-tunes that share a header, without reading gigabytes.
FINGERPRINT_SAMPLE = 256


@dataclass(frozen=True)
class StateHeader:
    """What a saved state belongs to."""

    model: str             # model_fingerprint() of the GGUF file
    model_name: str        # the file's name, for messages
    cache_k: str
    cache_v: str
    kv_transform: str      # what applied ("off", "k_calibrate+v_equalize", ...)
    n_ctx: int
    swa_full: bool
    sequence_only: bool    # llama_state_seq_* (sequence 0's cache cells) instead of the whole context
    tokens: tuple          # the tokens whose K/V the state holds, in order
    n_dropped: int = 0     # tokens context shifts took out of the text the cache stands for


def model_fingerprint(path: "str | os.PathLike") -> str:
    """sha256 of a GGUF file's header and of the first bytes of every tensor's data."""
    header = read_gguf_header(path)
    digest = hashlib.sha256()
    with open(header.path, "rb") as f:
        digest.update(f.read(header.data_offset))
        for tensor in header.tensors:
            f.seek(header.data_offset + tensor.offset)
            digest.update(f.read(FINGERPRINT_SAMPLE))
    return digest.hexdigest()


def pack(header: StateHeader, payload: bytes) -> bytes:
    """The saved form of a state: MAGIC, version, header, llama.cpp's bytes."""
    fields = dataclasses.asdict(header)
    fields["tokens"] = list(header.tokens)
    text = json.dumps(fields, separators=(",", ":")).encode("utf-8")
    return MAGIC + struct.pack("<II", FORMAT_VERSION, len(text)) + text + payload


def unpack(data: bytes) -> "tuple[StateHeader, memoryview]":
    """The header and llama.cpp's bytes of a saved state; StateError if it is not one."""
    view = memoryview(data)
    fixed = len(MAGIC) + 8
    if len(view) < fixed or bytes(view[:len(MAGIC)]) != MAGIC:
        raise StateError("not a pyturbo context state (no PYTURBO-STATE header)")
    version, length = struct.unpack_from("<II", view, len(MAGIC))
    if version != FORMAT_VERSION:
        raise StateError(f"context state format {version}; this pyturbo reads format {FORMAT_VERSION}")
    if fixed + length > len(view):
        raise StateError(f"truncated context state: its header claims {length} bytes, "
                         f"{len(view) - fixed} are there")
    try:
        fields = json.loads(bytes(view[fixed:fixed + length]).decode("utf-8"))
        fields["tokens"] = tuple(int(t) for t in fields["tokens"])
        header = StateHeader(**fields)
    except (ValueError, TypeError, KeyError) as e:
        raise StateError(f"damaged context state header ({e})") from None
    return header, view[fixed + length:]


def check_compatible(saved: StateHeader, target: StateHeader, target_n_ctx: int) -> None:
    """Refuse, with the reason, a state the target context cannot take exactly."""
    if saved.model != target.model:
        raise StateError(f"the state was saved from another model ({saved.model_name}, fingerprint "
                         f"{saved.model[:12]}); this context runs {target.model_name} ({target.model[:12]})")
    if (saved.cache_k, saved.cache_v) != (target.cache_k, target.cache_v):
        raise StateError(f"the state holds a K {saved.cache_k} / V {saved.cache_v} cache; this context's is "
                         f"K {target.cache_k} / V {target.cache_v}")
    if saved.kv_transform != target.kv_transform:
        raise StateError(f"the state's keys and values were stored with kv_transform {saved.kv_transform!r}; "
                         f"this context applies {target.kv_transform!r}")
    if saved.kv_transform != "off" and saved.n_ctx != target_n_ctx:
        # The calibrated transforms are fitted per context size: other n_ctx, other matrices.
        raise StateError(f"the state was saved at n_ctx {saved.n_ctx} with kv_transform {saved.kv_transform!r}, "
                         f"whose matrices depend on n_ctx; this context has n_ctx {target_n_ctx}")
    if len(saved.tokens) > target_n_ctx:
        raise StateError(f"the state holds {len(saved.tokens)} tokens; this context has room for {target_n_ctx}")
    if saved.swa_full != target.swa_full:
        raise StateError(f"the state was saved with swa_full={saved.swa_full}; this context has "
                         f"swa_full={target.swa_full}")


def write_file(path: "str | os.PathLike", data: bytes) -> None:
    """Write the whole file or nothing: a reader never sees half a state."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def read_file(path: "str | os.PathLike") -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise StateError(f"cannot read the context state file {path}: {e.strerror or e}") from None


def read_native(context, sequence_only: bool) -> bytes:
    """llama.cpp's state of a pyturbo.Context: all of it, or sequence 0's cache cells alone."""
    health: WorkerHealth = context.health
    health.check_workers("llama_state_get_data")  # a lost RPC worker would end the process
    ctx_handle = context.handle
    if sequence_only:
        size = llama.llama_state_seq_get_size(ctx_handle, 0)
        buf = ffi.new("uint8_t[]", max(1, size))
        written = llama.llama_state_seq_get_data(ctx_handle, buf, size, 0)
    else:
        size = llama.llama_state_get_size(ctx_handle)
        buf = ffi.new("uint8_t[]", max(1, size))
        written = llama.llama_state_get_data(ctx_handle, buf, size)
    if written == 0 and size:
        raise ContextError("llama.cpp could not write the context state")
    return ffi.buffer(buf, written)[:]


def write_native(context, payload, sequence_only: bool) -> None:
    """Hand llama.cpp's state bytes back to a pyturbo.Context; StateError with its reason if refused."""
    health: WorkerHealth = context.health
    health.check_workers("llama_state_set_data")  # a lost RPC worker would end the process
    ctx_handle = context.handle
    src = ffi.from_buffer(payload)
    with _native.captured_log() as log:
        if sequence_only:
            read = llama.llama_state_seq_set_data(ctx_handle, src, len(payload), 0)
        else:
            read = llama.llama_state_set_data(ctx_handle, src, len(payload))
    if read == 0:
        reason = _native.last_problem(log) or "llama.cpp gave no reason"
        raise StateError(f"llama.cpp could not restore the context state: {reason}")
