"""Hostile GGUF files: a seeded mutation fuzzer for every pyturbo entry point that opens a model.

    python tests/fuzz_gguf.py --cases 1620 --seed 14                 # what tests/test_fuzz.py runs (~75 s)
    python tests/fuzz_gguf.py --cases 20000 --seed 7 --json out.json  # the long mode (~20 min on 2 cores)
    python tests/fuzz_gguf.py --seed 7 --replay 1234 --entry fit     # one case again, in this process
    python tests/fuzz_gguf.py --seed 7 --replay 1234 --entry fit --keep bad.gguf   # and keep its file

Each case is (seed, index, entry): the index picks a base file and a mutation from
a random.Random seeded with "seed/index" alone, so `--replay INDEX --entry NAME`
rebuilds the same bytes and runs the same call. Entries rotate over the cases
(`--entry` narrows them).

Bases: the tiny llama, qwen2 (k/v biases, which pyturbo.kv_transform reads) and
gemma3 (sliding window) models of tests/tiny_gguf.py, and SmolLM2-135M's header
alone (its bytes up to the data section; used only by the entry points that
read headers). Mutations (`mutate`): truncation (cuts weighted toward the
header), bit flips, random bytes over the header, a header field (version,
counts, string lengths, value types, array item types and counts, tensor
n_dims, dims, type ids, offsets) set to an extreme, a metadata value that memory
planning or llama.cpp reads set to an extreme, a wrong type, or removed, the
architecture swapped (its keys renamed or not), and a tensor given another type
or shape with the data section laid out again (such files pass ggml's checks and
reach llama.cpp's model loader). A quarter of the cases stack two or three.

Entry points: pyturbo.Model (llama.cpp's loader) and a first context on it,
`python -m pyturbo.info` (text and --json), pyturbo.memory.estimate and
max_context, `python -m pyturbo.fit --memory 8GiB` (markdown and --json),
pyturbo.weights.quantize and `python -m pyturbo.quantize` to q8_0, and the
llama-cpp-python drop-in (pyturbo.llama_cpp, then llama_cpp.Llama(model_path=...)).

What passes:
- ok: a result, and a sane one (no negative sizes or counts, --json parses);
- clean: a pyturbo.PyturboError; for a command, exit code 2 with exactly one
  line on stderr (besides quantize's progress bar) and no traceback. For
  llama_cpp.Llama, which is llama-cpp-python's code: a PyturboError
  (pyturbo.llama_cpp checks the file before llama.cpp loads it), or the
  ValueError / RuntimeError that llama-cpp-python raises itself ("Failed to
  load model from file: ...", "Failed to create llama_context"), or a jinja2
  TemplateError from compiling a mangled chat template (llama-cpp-python
  compiles it; it names the template error). Any other exception fails.

What fails: traceback (any other exception, MemoryError included), crash (the
process killed by a signal: SIGSEGV, SIGABRT from a GGML_ASSERT, ...), hang (no
answer within --timeout seconds), bad-cli (a command's exit code or output
breaks the rules above), invalid (a result that fails the sanity checks).

The harness: one persistent worker process runs the cases in-process, each
case's spec sent over a pipe and the outcome sent back; the worker runs under
RLIMIT_AS (--memory-limit, 4 GiB) so an unbounded allocation is a MemoryError.
The parent kills a worker that does not answer within --timeout (a hang) and
records a worker that dies (a crash, with the tail of its stderr: the assert or
faulthandler's stack), then starts a new one. Commands run in-process through
their main() with stdout and stderr captured; one case in --subprocess-every
(default 40) runs the command as a real `python -m` subprocess instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import json
import math
import os
import random
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# -- GGUF layout (a second, independent reader: the fuzzer must not trust pyturbo's) -------------

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_FORMATS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
                  FLOAT32: "<f", BOOL: "<B", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
TYPE_NAMES = {UINT8: "u8", INT8: "i8", UINT16: "u16", INT16: "i16", UINT32: "u32", INT32: "i32", FLOAT32: "f32",
              BOOL: "bool", STRING: "str", ARRAY: "arr", UINT64: "u64", INT64: "i64", FLOAT64: "f64"}
INTEGER_TYPES = (UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64)
SIGNED = (INT8, INT16, INT32, INT64)
DEFAULT_ALIGNMENT = 32
# ggml type id -> (values per block, bytes per block), for laying out tensor data again.
GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
               12: (256, 144), 14: (256, 210), 24: (1, 1), 26: (1, 4), 30: (1, 2)}


@dataclasses.dataclass
class Field:
    """A fixed-width number in the header, where a mutation can set an extreme."""

    offset: int
    width: int
    name: str
    kind: str   # version, count, length, type, value, dim, offset


@dataclasses.dataclass
class KeyValue:
    key: str
    start: int        # offset of the key's length
    type_offset: int  # offset of its value type
    end: int          # offset after its value
    type: int
    value: object

    def raw(self, data: bytes, key: "str | None" = None) -> bytes:
        """The pair as the file stores it (under another key, if given)."""
        if key is None:
            return data[self.start:self.end]
        return encode_value(STRING, key) + data[self.type_offset:self.end]


@dataclasses.dataclass
class TensorEntry:
    name: str
    start: int
    end: int
    shape: list
    type: int
    offset: int


@dataclasses.dataclass
class Layout:
    """Where every part of a GGUF header lies (a valid header: bases, or files a mutation kept valid)."""

    version: int
    kvs: list
    tensors: list
    header_end: int   # after the last tensor info
    data_start: int
    alignment: int
    fields: list

    @property
    def metadata(self) -> dict:
        return {kv.key: kv.value for kv in self.kvs}

    @property
    def arch(self) -> str:
        value = self.metadata.get("general.architecture", "llama")
        return value if isinstance(value, str) else "llama"


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError("truncated")
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if n > len(self.data) - self.pos:
            raise ValueError("string past the end")
        text = self.data[self.pos:self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return text


def parse_layout(data: bytes) -> Layout:
    """The layout of a GGUF header; ValueError if it is not a well-formed one."""
    c = _Cursor(data)
    if data[:4] != b"GGUF":
        raise ValueError("magic")
    c.pos = 4
    fields = [Field(4, 4, "version", "version"), Field(8, 8, "n_tensors", "count"), Field(16, 8, "n_kv", "count")]
    version, n_tensors, n_kv = c.take("<I"), c.take("<Q"), c.take("<Q")
    if n_kv > len(data) or n_tensors > len(data):
        raise ValueError("counts")
    kvs = []
    for _ in range(n_kv):
        start = c.pos
        key = c.string()
        fields.append(Field(start, 8, f"kv[{key}].key_len", "length"))
        type_offset = c.pos
        fields.append(Field(c.pos, 4, f"kv[{key}].type", "type"))
        value_type = c.take("<I")
        value = _parse_value(c, value_type, key, fields)
        kvs.append(KeyValue(key, start, type_offset, c.pos, value_type, value))
    tensors = []
    for _ in range(n_tensors):
        start = c.pos
        name = c.string()
        fields.append(Field(start, 8, f"tensor[{name}].name_len", "length"))
        fields.append(Field(c.pos, 4, f"tensor[{name}].n_dims", "count"))
        n_dims = c.take("<I")
        if n_dims > 8:
            raise ValueError("n_dims")
        shape = []
        for j in range(n_dims):
            fields.append(Field(c.pos, 8, f"tensor[{name}].dim[{j}]", "dim"))
            shape.append(c.take("<Q"))
        fields.append(Field(c.pos, 4, f"tensor[{name}].type", "type"))
        type_id = c.take("<I")
        fields.append(Field(c.pos, 8, f"tensor[{name}].offset", "offset"))
        offset = c.take("<Q")
        tensors.append(TensorEntry(name, start, c.pos, shape, type_id, offset))
    alignment = next((kv.value for kv in kvs if kv.key == "general.alignment"), DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        alignment = DEFAULT_ALIGNMENT
    return Layout(version, kvs, tensors, c.pos, _pad(c.pos, alignment), alignment, fields)


def _parse_value(c: _Cursor, value_type: int, key: str, fields: list, depth: int = 0):
    if value_type in SCALAR_FORMATS:
        fields.append(Field(c.pos, struct.calcsize(SCALAR_FORMATS[value_type]), f"kv[{key}].value", "value"))
        return c.take(SCALAR_FORMATS[value_type])
    if value_type == STRING:
        fields.append(Field(c.pos, 8, f"kv[{key}].str_len", "length"))
        return c.string()
    if value_type == ARRAY and depth == 0:
        fields.append(Field(c.pos, 4, f"kv[{key}].item_type", "type"))
        item_type = c.take("<I")
        fields.append(Field(c.pos, 8, f"kv[{key}].count", "count"))
        count = c.take("<Q")
        if count > len(c.data) - c.pos:
            raise ValueError("array count")
        if item_type in SCALAR_FORMATS and item_type != BOOL:
            fmt = SCALAR_FORMATS[item_type]
            size = struct.calcsize(fmt)
            if count * size > len(c.data) - c.pos:
                raise ValueError("array past the end")
            values = list(struct.unpack_from(f"<{count}{fmt[1]}", c.data, c.pos))
            c.pos += count * size
            return values
        # Only the first few items' own fields are worth mutating; the rest are read past.
        items = [_parse_value(c, item_type, f"{key}[{i}]", fields, depth + 1) for i in range(min(count, 4))]
        if item_type == STRING:
            data, pos = c.data, c.pos
            for _ in range(count - len(items)):
                if pos + 8 > len(data):
                    raise ValueError("truncated")
                n = struct.unpack_from("<Q", data, pos)[0]
                if n > len(data) - pos - 8:
                    raise ValueError("string past the end")
                items.append(data[pos + 8:pos + 8 + n].decode("utf-8", "replace"))
                pos += 8 + n
            c.pos = pos
        else:
            items += [_parse_value(c, item_type, key, [], depth + 1) for _ in range(count - len(items))]
        return items
    raise ValueError(f"value type {value_type}")


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def encode_value(value_type: int, value) -> bytes:
    """A value's bytes as GGUF stores it (integers wrap to the type's width, as a C cast would)."""
    if value_type in INTEGER_TYPES:
        fmt = SCALAR_FORMATS[value_type]
        bits = 8 * struct.calcsize(fmt)
        wrapped = int(value) % (1 << bits)
        if value_type in SIGNED and wrapped >= 1 << (bits - 1):
            wrapped -= 1 << bits
        return struct.pack(fmt, wrapped)
    if value_type == BOOL:
        return struct.pack("<B", int(value) & 0xFF)
    if value_type in (FLOAT32, FLOAT64):
        return struct.pack(SCALAR_FORMATS[value_type], float(value))
    if value_type == STRING:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(raw)) + raw
    if value_type == ARRAY:
        item_type, items = value
        return struct.pack("<IQ", item_type, len(items)) + b"".join(
            encode_value(item_type, item) if item_type != ARRAY else encode_value(ARRAY, item) for item in items)
    raise ValueError(f"cannot encode type {value_type}")


def encode_kv(key: str, value_type: int, value) -> bytes:
    return encode_value(STRING, key) + struct.pack("<I", value_type) + encode_value(value_type, value)


def rebuild(data: bytes, layout: Layout, metadata: list, tensor_infos: "bytes | None" = None,
            tensor_data: "bytes | None" = None, alignment: "int | None" = None) -> bytes:
    """A file with this metadata (each pair's bytes, in order), the tensor infos and data section
    of `data` (or the ones given), the data section padded to `alignment` (default the file's)."""
    infos = data[layout.kvs[-1].end if layout.kvs else 24:layout.header_end] if tensor_infos is None else tensor_infos
    if alignment is None or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 16:
        alignment = layout.alignment
    counts = struct.pack("<IQQ", layout.version, len(layout.tensors), len(metadata))
    head = b"GGUF" + counts + b"".join(metadata) + infos
    body = data[layout.data_start:] if tensor_data is None else tensor_data
    return head + bytes(_pad(len(head), alignment) - len(head)) + body


# -- mutations -----------------------------------------------------------------------------------

# Keys memory planning, pyturbo.info or llama.cpp's hyperparameter loader read, under the architecture.
PLANNER_KEYS = (
    "context_length", "block_count", "embedding_length", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "attention.key_length", "attention.value_length", "attention.sliding_window",
    "attention.sliding_window_pattern", "attention.key_length_mla", "attention.layer_norm_rms_epsilon",
    "rope.dimension_count", "rope.freq_base", "vocab_size", "expert_count", "expert_used_count",
    "expert_feed_forward_length", "full_attention_interval", "ssm.conv_kernel", "ssm.inner_size",
    "ssm.state_size", "ssm.group_count", "wkv.head_size", "token_shift_count", "attn_logit_softcapping",
    "attention.sliding_window_key_length", "attention.sliding_window_value_length", "leading_dense_block_count",
    "rope.scaling.type", "rope.scaling.factor", "nextn_predict_layers", "expert_group_count", "pooling_type",
    "attention.causal",
)
GENERAL_KEYS = ("general.alignment", "general.file_type", "general.architecture", "general.name",
                "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.chat_template", "tokenizer.ggml.merges")
ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "mamba", "rwkv6", "deepseek2", "llama4",
                 "cohere2", "gpt-oss", "bert", "granitehybrid", "bogus", "")
# Integers that break assumptions: zero, one, -1 as unsigned, the signed and unsigned limits.
INT_EXTREMES = (0, 1, 2, 3, 7, -1, -2, 2**31 - 1, 2**31, -2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, -2**63,
                2**64 - 1, 10**12, 10**6, 65536)
# Strings that mean something to llama.cpp: tokenizer models and pre-tokenizers, RoPE scaling types.
STRING_VALUES = ("llama", "gpt2", "bert", "t5", "rwkv", "plamo2", "none", "no_vocab", "default", "qwen2", "llama3",
                 "yarn", "longrope", "linear", "bogus")
FLOAT_EXTREMES = (float("nan"), float("inf"), float("-inf"), 0.0, -1.0, 1e30, 0.5, 1e-30)


def field_extreme(rng: random.Random, width: int, old: int) -> int:
    """An extreme for an unsigned field of `width` bytes (wraps when written)."""
    bits = 8 * width
    choices = [0, 1, (1 << bits) - 1, (1 << (bits - 1)) - 1, 1 << (bits - 1), old + 1, old - 1, old * 2,
               rng.randrange(2, 17), rng.randrange(1 << (bits - 8), 1 << bits)]
    if bits == 64:
        choices += [2**32 - 1, 2**32, 2**31 - 1, 2**40]
    return rng.choice(choices) % (1 << bits)


def metadata_value(rng: random.Random, old, n_layer: int):
    """(type, value) to put under a key, or None to remove it."""
    kind = rng.choices(["int", "float", "bool", "string", "array", "nested", "remove"],
                       [10, 2, 1, 2, 4, 1, 1])[0]
    if kind == "int":
        choices = list(INT_EXTREMES) + [n_layer - 1, n_layer + 1]
        if isinstance(old, int) and not isinstance(old, bool):
            choices += [old - 1, old + 1, old * 3, -old]
        return rng.choice(INTEGER_TYPES), rng.choice(choices)
    if kind == "float":
        return rng.choice((FLOAT32, FLOAT64)), rng.choice(FLOAT_EXTREMES)
    if kind == "bool":
        return BOOL, rng.choice((0, 1, 255))
    if kind == "string":
        return STRING, rng.choice(("", "7", "abc", "x" * 300, b"\xff\xfe", "{{ bad", str(old)[:40]) + STRING_VALUES)
    if kind == "array":
        item_type = rng.choice((UINT32, INT32, INT64, UINT8, BOOL, FLOAT32, STRING))
        length = rng.choice((0, 1, 2, n_layer - 1, n_layer, n_layer, n_layer + 1, 600, 100_000))
        if item_type == STRING:
            return ARRAY, (STRING, [rng.choice(("", "a", "7")) for _ in range(min(length, 600))])
        if item_type == FLOAT32:
            return ARRAY, (FLOAT32, [rng.choice(FLOAT_EXTREMES) for _ in range(length)])
        pool = [0, 1, 2, 64, -1, 2**31 - 1, 2**32 - 1, rng.randrange(1, 9)]
        return ARRAY, (item_type, [rng.choice(pool) for _ in range(length)])
    if kind == "nested":
        return ARRAY, (ARRAY, [(UINT32, [1, 2])] * rng.choice((1, 2, n_layer)))
    return None


def mutate_metadata(data: bytes, layout: Layout, rng: random.Random) -> "tuple[bytes, str]":
    """A planner or general key set to an extreme, a wrong type, or removed; or the architecture swapped."""
    arch = layout.arch
    n_layer = layout.metadata.get(f"{arch}.block_count", 2)
    n_layer = n_layer if isinstance(n_layer, int) and 0 < n_layer < 1000 else 2
    if rng.random() < 0.12:
        new_arch = rng.choice(ARCHITECTURES)
        rename = rng.random() < 0.6
        out = []
        for kv in layout.kvs:
            if kv.key == "general.architecture":
                out.append(encode_kv(kv.key, STRING, new_arch))
            elif rename and kv.key.startswith(arch + "."):
                out.append(kv.raw(data, new_arch + kv.key[len(arch):]))
            else:
                out.append(kv.raw(data))
        return rebuild(data, layout, out), f"architecture {arch} -> {new_arch!r}{' (keys renamed)' if rename else ''}"
    key = (f"{arch}.{rng.choice(PLANNER_KEYS)}" if rng.random() < 0.7 else rng.choice(GENERAL_KEYS))
    old = layout.metadata.get(key)
    new = metadata_value(rng, old, n_layer)
    out = [kv.raw(data) for kv in layout.kvs if kv.key != key]
    if new is not None:
        index = next((i for i, kv in enumerate(layout.kvs) if kv.key == key), len(out))
        out.insert(index, encode_kv(key, *new))
    alignment = new[1] if key == "general.alignment" and new is not None and new[0] == UINT32 else None
    return rebuild(data, layout, out, alignment=alignment), f"metadata {key} = {_describe_value(new)}"


def _describe_value(new) -> str:
    if new is None:
        return "(removed)"
    t, v = new
    if t == ARRAY:
        item_type, items = v
        shown = items[:3] if item_type != ARRAY else "[...]"
        return f"arr[{TYPE_NAMES[item_type]}] of {len(items)} {shown}{'...' if len(items) > 3 else ''}"
    return f"{TYPE_NAMES[t]}:{v!r}"[:60]


def mutate_field(data: bytes, layout: Layout, rng: random.Random) -> "tuple[bytes, str]":
    """One header field (count, length, type id, dim, offset, value) set to an extreme, in place."""
    kind = rng.choices(["version", "count", "length", "type", "value", "dim", "offset"],
                       [1, 3, 3, 3, 3, 4, 3])[0]
    fields = [f for f in layout.fields if f.kind == kind] or layout.fields
    field = rng.choice(fields)
    old = int.from_bytes(data[field.offset:field.offset + field.width], "little")
    new = field_extreme(rng, field.width, old)
    out = bytearray(data)
    out[field.offset:field.offset + field.width] = new.to_bytes(field.width, "little")
    return bytes(out), f"field {field.name} {old} -> {new}"


def mutate_tensor(data: bytes, layout: Layout, rng: random.Random) -> "tuple[bytes, str]":
    """A tensor given another type or shape, the data section laid out again so that offsets and
    sizes agree (ggml accepts the file; llama.cpp's loader must judge the shapes)."""
    if not layout.tensors or layout.data_start >= len(data):
        return mutate_field(data, layout, rng)
    target = rng.choice(layout.tensors)
    shape, type_id = list(target.shape), target.type
    what = rng.choice(["type", "dim", "drop_dim", "add_dim"])
    if what == "type":
        type_id = rng.choice([t for t in GGML_BLOCKS if shape and shape[0] % GGML_BLOCKS[t][0] == 0] or [0])
    elif what == "dim" and shape:
        j = rng.randrange(len(shape))
        shape[j] = rng.choice((0, 1, 2, shape[j] // 2 or 1, shape[j] + 32, shape[j] * 2, 64))
    elif what == "drop_dim" and len(shape) > 1:
        shape = shape[:-1]
    elif len(shape) < 4:
        shape.append(rng.choice((1, 2, 3)))
    relaid = relayout_tensor(data, layout, target, shape, type_id)
    if relaid is None:
        return mutate_field(data, layout, rng)
    return relaid, f"tensor {target.name} {target.shape}/{target.type} -> {shape}/{type_id}"


def relayout_tensor(data: bytes, layout: Layout, target: "TensorEntry | str", shape: list,
                    type_id: int) -> "bytes | None":
    """The file with the target tensor (one of layout's, or a name) given this shape and ggml
    type, every tensor's data laid out again where ggml expects it (its old bytes, cut or
    zero-padded); None if a size is unknown or out of proportion (an earlier mutation may
    have left shapes no file of this size holds)."""
    infos, body = [], bytearray()
    for t in layout.tensors:
        chosen = t is target if isinstance(target, TensorEntry) else t.name == target
        new_shape, new_type = (shape, type_id) if chosen else (t.shape, t.type)
        old_bytes = _nbytes(t.shape, t.type)
        new_bytes = _nbytes(new_shape, new_type)
        if old_bytes is None or new_bytes is None or len(body) + new_bytes > 2 * len(data) + (1 << 20):
            return None
        start = layout.data_start + t.offset
        chunk = data[start:start + min(old_bytes, new_bytes)]
        body += chunk + bytes(new_bytes - len(chunk))
        infos.append(encode_value(STRING, t.name) + struct.pack("<I", len(new_shape))
                     + b"".join(struct.pack("<Q", d) for d in new_shape)
                     + struct.pack("<IQ", new_type, len(body) - new_bytes))
        body += bytes(_pad(len(body), layout.alignment) - len(body))
    metadata = [kv.raw(data) for kv in layout.kvs]
    return rebuild(data, layout, metadata, b"".join(infos), bytes(body))


def with_metadata(data: bytes, key: str, value_type: int, value) -> bytes:
    """The file with `key` set to a value of this GGUF type (None: removed); for tests."""
    layout = parse_layout(data)
    out = [kv.raw(data) for kv in layout.kvs if kv.key != key]
    if value_type is not None:
        index = next((i for i, kv in enumerate(layout.kvs) if kv.key == key), len(out))
        out.insert(index, encode_kv(key, value_type, value))
    alignment = value if key == "general.alignment" and value_type == UINT32 else None
    return rebuild(data, layout, out, alignment=alignment)


def with_field(data: bytes, name: str, value: int) -> bytes:
    """The file with one header field (as parse_layout names it) overwritten in place; for tests."""
    field = next(f for f in parse_layout(data).fields if f.name == name)
    out = bytearray(data)
    out[field.offset:field.offset + field.width] = (value % (1 << 8 * field.width)).to_bytes(field.width, "little")
    return bytes(out)


def _nbytes(shape: list, type_id: int) -> "int | None":
    if type_id not in GGML_BLOCKS or not shape:
        return None
    block, size = GGML_BLOCKS[type_id]
    return shape[0] // block * size * math.prod(shape[1:])


def _header_weighted_position(rng: random.Random, data: bytes, header_end: int) -> int:
    if not data:
        return 0
    if rng.random() < 0.8 and header_end > 0:
        return rng.randrange(min(header_end, len(data)))
    return rng.randrange(len(data))


def mutate_truncate(data: bytes, header_end: int, rng: random.Random) -> "tuple[bytes, str]":
    cut = rng.choice((0, 3, 4, 8, 16, 24)) if rng.random() < 0.1 else _header_weighted_position(rng, data, header_end)
    return data[:cut], f"truncate at {cut} of {len(data)}"


def mutate_bitflip(data: bytes, header_end: int, rng: random.Random) -> "tuple[bytes, str]":
    out = bytearray(data)
    flips = []
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        pos = _header_weighted_position(rng, out, header_end)
        bit = rng.randrange(8)
        out[pos] ^= 1 << bit
        flips.append(f"{pos}.{bit}")
    return bytes(out), f"bitflip {','.join(flips)}"


def mutate_random_bytes(data: bytes, header_end: int, rng: random.Random) -> "tuple[bytes, str]":
    out = bytearray(data)
    pos = rng.randrange(max(1, min(header_end, len(data))))
    n = rng.choice((1, 2, 4, 8, 16, 64))
    out[pos:pos + n] = bytes(rng.randrange(256) for _ in range(n)) if rng.random() < 0.7 else b"\xff" * n
    return bytes(out[:len(data)]), f"random bytes {pos}+{n}"


_BASE_LAYOUTS: dict = {}


def _layout_of_base(base: bytes) -> Layout:
    """A base file's layout, parsed once (SmolLM2's header takes a while)."""
    key = id(base)
    if key not in _BASE_LAYOUTS:
        _BASE_LAYOUTS[key] = (base, parse_layout(base))  # the bytes, too: their id stays theirs
    return _BASE_LAYOUTS[key][1]


def mutate_heads(data: bytes, layout: Layout, rng: random.Random) -> "tuple[bytes, str]":
    """Head counts and sizes changed together so the projection shapes still match (a file
    llama.cpp loads, with another attention geometry), RoPE's width sometimes not the head's."""
    arch, meta = layout.arch, layout.metadata
    n_head, n_head_kv = meta.get(f"{arch}.attention.head_count"), meta.get(f"{arch}.attention.head_count_kv")
    n_embd = meta.get(f"{arch}.embedding_length")
    if not all(isinstance(x, int) and x > 0 for x in (n_head, n_head_kv, n_embd)):
        return mutate_metadata(data, layout, rng)
    head = meta.get(f"{arch}.attention.key_length", n_embd // n_head)
    q_rows, kv_rows = n_head * head, n_head_kv * head
    sizes = [h for h in (8, 16, 32, 48, 64, 96, 128, 256) if q_rows % h == 0 and kv_rows % h == 0]
    new_head = rng.choice(sizes or [head])
    n_rot = rng.choice((new_head, new_head, new_head // 2, new_head + 2))
    changes = {"attention.head_count": q_rows // new_head, "attention.head_count_kv": kv_rows // new_head,
               "attention.key_length": new_head, "attention.value_length": new_head,
               "rope.dimension_count": n_rot}
    out = [kv.raw(data) for kv in layout.kvs if kv.key[len(arch) + 1:] not in changes]
    out += [encode_kv(f"{arch}.{key}", UINT32, value) for key, value in changes.items()]
    return rebuild(data, layout, out), (f"heads {q_rows // new_head}/{kv_rows // new_head} of {new_head}, "
                                        f"rope {n_rot}")


MUTATIONS = ("truncate", "bitflip", "random_bytes", "field", "metadata", "tensor", "heads")
MUTATION_WEIGHTS = (2, 2, 2, 4, 5, 1, 1)


def mutate(base: bytes, rng: random.Random) -> "tuple[bytes, str]":
    """Apply one to three mutations; the structural ones need a file that still parses."""
    data, steps = base, []
    header_end = _layout_of_base(base).header_end
    n_steps = 1 if rng.random() < 0.75 else rng.choice((2, 3))
    for _ in range(n_steps):
        kind = rng.choices(MUTATIONS, MUTATION_WEIGHTS)[0]
        layout = None
        if kind in ("field", "metadata", "tensor", "heads"):
            try:
                layout = _layout_of_base(data) if data is base else parse_layout(data)
            except (ValueError, struct.error, OverflowError):
                kind = "bitflip"
        if kind == "truncate":
            data, what = mutate_truncate(data, header_end, rng)
        elif kind == "bitflip":
            data, what = mutate_bitflip(data, header_end, rng) if data else (data, "bitflip (empty)")
        elif kind == "random_bytes":
            data, what = mutate_random_bytes(data, header_end, rng) if data else (data, "random bytes (empty)")
        elif kind == "field":
            data, what = mutate_field(data, layout, rng)
        elif kind == "metadata":
            data, what = mutate_metadata(data, layout, rng)
        elif kind == "heads":
            data, what = mutate_heads(data, layout, rng)
        else:
            data, what = mutate_tensor(data, layout, rng)
        steps.append(what)
    return data, "; ".join(steps)


# -- bases and cases ---------------------------------------------------------------------------

HEADER_ONLY_BASES = ("smol-header",)


def smol_model_path() -> "Path | None":
    cache = Path(os.environ.get("PYTURBO_CACHE", Path.home() / ".cache" / "pyturbo"))
    path = cache / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def build_bases(directory: Path, smol: "Path | bool | None" = None) -> dict:
    """name -> bytes of every base file: the tiny models, and SmolLM2's header from `smol`
    (None: from pyturbo's cache dir when the model is there; False: none)."""
    from tiny_gguf import write_tiny_llama

    directory.mkdir(parents=True, exist_ok=True)
    bases = {
        "tiny-llama": write_tiny_llama(directory / "tiny-llama.gguf").read_bytes(),
        "tiny-qwen2": write_tiny_llama(directory / "tiny-qwen2.gguf", arch="qwen2", bias=8.0, seed=1).read_bytes(),
        "tiny-gemma3": write_tiny_llama(directory / "tiny-gemma3.gguf", arch="gemma3", n_layer=3, seed=2).read_bytes(),
    }
    smol = smol_model_path() if smol is None else smol
    if smol:
        with open(smol, "rb") as f:
            head = f.read(8 << 20)
        bases["smol-header"] = head[:parse_layout(head).data_start]
    return bases


@dataclasses.dataclass(frozen=True)
class EntryPoint:
    name: str
    header_only: bool      # reads only the header: SmolLM2's header-only file is a valid base
    cli: "str | None"      # module of a command run through main(argv), else None


ENTRY_POINTS = {e.name: e for e in (
    EntryPoint("model", False, None),
    EntryPoint("info", True, "pyturbo.info"),
    EntryPoint("info-json", True, "pyturbo.info"),
    EntryPoint("estimate", True, None),
    EntryPoint("fit", True, "pyturbo.fit"),
    EntryPoint("fit-json", True, "pyturbo.fit"),
    EntryPoint("quantize", False, None),
    EntryPoint("quantize-cli", False, "pyturbo.quantize"),
    EntryPoint("llama-cpp", False, None),
)}
# Deliberately broken entry points: tests/test_fuzz.py checks that each is caught as what it is.
SELF_TESTS = {e.name: e for e in (
    EntryPoint("selftest-crash", True, None), EntryPoint("selftest-traceback", True, None),
    EntryPoint("selftest-hang", True, None), EntryPoint("selftest-memory", True, None),
    EntryPoint("selftest-badcli", True, "selftest"), EntryPoint("selftest-ok", True, None),
)}
ALL_ENTRY_POINTS = {**ENTRY_POINTS, **SELF_TESTS}
BASE_WEIGHTS = {"tiny-llama": 4, "tiny-qwen2": 3, "tiny-gemma3": 2, "smol-header": 2}


@dataclasses.dataclass
class Case:
    seed: int
    index: int
    entry: str
    base: str
    mutation: str
    params: dict
    subprocess: bool

    def replay_command(self) -> str:
        return f"python tests/fuzz_gguf.py --seed {self.seed} --replay {self.index} --entry {self.entry}"


def make_case(seed: int, index: int, entry: str, bases: dict, subprocess_every: int = 0) -> "tuple[Case, bytes]":
    """The case's spec and mutated bytes: the same (seed, index, entry) always gives the same ones."""
    spec = ALL_ENTRY_POINTS[entry]
    rng = random.Random(f"{seed}/{index}")
    names = [b for b in bases if spec.header_only or b not in HEADER_ONLY_BASES]
    base = rng.choices(names, [BASE_WEIGHTS.get(b, 1) for b in names])[0]
    data, mutation = mutate(bases[base], rng)
    prng = random.Random(f"{seed}/{index}/params")
    params = {
        "n_ctx": prng.choice((0, 256, 4096, 32768, 1 << 20)),
        "cache": prng.choice((("f16", "f16"), ("q8_0", "turbo3"), ("q4_0", "q4_0"), ("turbo4", "turbo4"),
                              ("q8_0", "q8_0"))),
        "flash_attn": prng.choice(("on", "auto", "off")),
        "n_seq": prng.choice((1, 1, 4)),
        "swa_full": prng.random() < 0.3,
        "weight_quant": prng.choice((None, None, "q4_K_M", "q2_K")),
        "fit_ctx": prng.random() < 0.25,
    }
    use_subprocess = bool(spec.cli and subprocess_every and prng.randrange(subprocess_every) == 0)
    return Case(seed, index, entry, base, mutation, params, use_subprocess), data


# -- running one case (in the worker, or in this process for --replay) ---------------------------

OK, CLEAN, TRACEBACK, CRASH, HANG, BAD_CLI, INVALID = "ok", "clean", "traceback", "crash", "hang", "bad-cli", "invalid"
FAILURES = (TRACEBACK, CRASH, HANG, BAD_CLI, INVALID)
OUTCOMES = (OK, CLEAN) + FAILURES


class InvalidResult(Exception):
    """A result that came back but cannot be right (a negative size, unparsable JSON)."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise InvalidResult(what)


def _cli_argv(entry: str, path: str, params: dict) -> list:
    if entry == "quantize-cli":
        return [path, str(Path(path).with_name("quantized-cli.gguf")), "q8_0", "-t", "1", "--force", "--json"]
    if entry.startswith("info"):
        return [path] + (["--json"] if entry == "info-json" else [])
    argv = [path, "--memory", "8GiB"]
    if params["fit_ctx"]:
        argv += ["-c", "4096"]
    return argv + (["--json"] if entry == "fit-json" else [])


def run_cli_in_process(module_name: str, argv: list) -> "tuple[int, str, str]":
    """A command as `python -m` would run it (run_main around main), stdout and stderr captured."""
    import importlib

    from pyturbo._cli import run_main

    module = importlib.import_module(module_name)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run_main(module.PROG, module.main, argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


# Commands whose output is one JSON object.
JSON_OUTPUT = ("info-json", "fit-json", "quantize-cli")
# A line of a tqdm bar (quantize's tensors-done bar goes to stderr): progress, not an error line.
PROGRESS_LINE = re.compile(r"\d+/\d+ \[[^\]]*\]\s*$")


def judge_cli(entry: str, code: int, stdout: str, stderr: str) -> "tuple[str, str]":
    """ok / clean / bad-cli for a command's exit code and output."""
    if "Traceback" in stderr:
        return TRACEBACK, stderr.strip().splitlines()[-1][:300]
    stderr = "\n".join(line for line in stderr.replace("\r", "\n").splitlines()
                       if line.strip() and not PROGRESS_LINE.search(line))
    if code == 0:
        if not stdout.strip():
            return BAD_CLI, "exit 0 with nothing on stdout"
        if entry in JSON_OUTPUT:
            try:
                record = json.loads(stdout)
            except ValueError as e:
                return BAD_CLI, f"--json output does not parse: {e}"
            problem = _negative_numbers(record)
            if problem:
                return INVALID, problem
        return OK, stdout.strip().splitlines()[0][:120]
    lines = stderr.strip().splitlines()
    if code == 2 and len(lines) == 1:
        return CLEAN, lines[0][:300]
    return BAD_CLI, f"exit {code}, {len(lines)} stderr lines: {stderr.strip()[:300]!r}"


def _negative_numbers(record, where: str = "") -> str:
    """The first negative size or count in a JSON record, or ''."""
    if isinstance(record, dict):
        for key, value in record.items():
            found = _negative_numbers(value, f"{where}.{key}")
            if found:
                return found
    elif isinstance(record, list):
        for i, value in enumerate(record):
            found = _negative_numbers(value, f"{where}[{i}]")
            if found:
                return found
    elif isinstance(record, int) and not isinstance(record, bool) and record < 0:
        return f"{where} is {record}"
    return ""


def call_entry(entry: str, path: str, params: dict, workdir: str):
    """Run an API entry point on the file; return a short description of the result."""
    if entry == "model":
        import pyturbo

        with pyturbo.Model(path) as model:
            facts = (model.n_layer, model.n_vocab, model.n_embd, model.description, model.metadata("general.name"),
                     model.chat_template, model.geometry.n_layer)
            _check(facts[0] > 0 and facts[1] >= 0, f"n_layer {facts[0]}, n_vocab {facts[1]}")
            # The first context builds the model's graph (llama.cpp asserts on some shapes only there),
            # a few tokens run it.
            k, v = params["cache"]
            with model.context(n_ctx=256, cache_k=k, cache_v=v, flash_attn=params["flash_attn"], n_threads=1,
                               kv_transform="off") as ctx:
                text = ctx.complete("the cat", max_tokens=2)
        return f"loaded: {facts[3]}, {k}/{v} context, generated {text!r}"
    if entry == "estimate":
        from pyturbo import memory

        k, v = params["cache"]
        est = memory.estimate(path, params["n_ctx"], k, v, n_seq=params["n_seq"], flash_attn=params["flash_attn"],
                              swa_full=params["swa_full"], weight_quant=params["weight_quant"])
        for name in ("n_ctx", "weights", "kv_k", "kv_v", "compute", "recurrent", "cells", "cells_swa"):
            _check(isinstance(getattr(est, name), int) and getattr(est, name) >= 0, f"{name} = {getattr(est, name)}")
        n_ctx, best = memory.max_context(path, "8GiB", k, v)
        _check(n_ctx >= 0 and (best is None or best.total >= 0), f"max_context {n_ctx}")
        return f"total {est.total}, max context {n_ctx}"
    if entry == "quantize":
        from pyturbo.weights import quantize

        dst = Path(workdir) / "quantized.gguf"
        try:
            result = quantize(path, dst, "q8_0", threads=1, progress=False, overwrite=True)
        finally:
            dst.unlink(missing_ok=True)
        _check(result.n_tensors >= 0 and result.dst_bytes > 0, f"quantized {result.dst_bytes} bytes")
        return f"quantized {result.n_tensors} tensors"
    if entry == "llama-cpp":
        import pyturbo.llama_cpp  # noqa: F401  (points llama_cpp at pyturbo's library first)
        from llama_cpp import Llama

        llm = Llama(model_path=path, n_ctx=256, n_batch=32, n_threads=1, verbose=False)
        try:
            n_vocab = llm.n_vocab()
        finally:
            llm.close()
        return f"loaded, {n_vocab} tokens"
    if entry == "selftest-crash":
        os.abort()
    if entry == "selftest-traceback":
        return {}["no such key"]
    if entry == "selftest-hang":
        time.sleep(3600)
    if entry == "selftest-memory":
        return len(bytearray(64 << 30))
    if entry == "selftest-ok":
        return "fine"
    raise KeyError(f"unknown entry point {entry}")


def judge_exception(entry: str, error: BaseException) -> "tuple[str, str]":
    from pyturbo.errors import PyturboError

    text = f"{type(error).__name__}: {error}"[:300]
    if isinstance(error, InvalidResult):
        return INVALID, str(error)
    if isinstance(error, PyturboError):
        return CLEAN, text
    if entry == "llama-cpp" and _llama_cpp_own_error(error):
        return CLEAN, text
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return TRACEBACK, text + where


def _llama_cpp_own_error(error: BaseException) -> bool:
    """An error llama-cpp-python raises on purpose: a plain ValueError / RuntimeError from its own
    code, or jinja2's error on a chat template it compiles."""
    if type(error).__module__.startswith("jinja2"):
        return True
    if type(error) not in (ValueError, RuntimeError):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and f"{os.sep}llama_cpp{os.sep}" in frames[-1].filename


def run_case(entry: str, path: str, params: dict, workdir: str) -> "tuple[str, str]":
    """(outcome, detail) of one case, in this process."""
    spec = ALL_ENTRY_POINTS[entry]
    if spec.cli:
        if spec.cli == "selftest":
            return judge_cli(entry, 2, "", "error one\nerror two\n")
        try:
            code, out, err = run_cli_in_process(spec.cli, _cli_argv(entry, path, params))
        except BaseException as e:  # escaped run_main: `python -m` would print a traceback
            if isinstance(e, KeyboardInterrupt):
                raise
            return judge_exception("cli", e)
        return judge_cli(entry, code, out, err)
    try:
        return OK, str(call_entry(entry, path, params, workdir))[:200]
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        return judge_exception(entry, e)


def run_cli_subprocess(case: Case, path: str, workdir: str, timeout: float, memory_limit: int) -> "tuple[str, str]":
    """The command as a real `python -m` process: the path users take."""
    module = ALL_ENTRY_POINTS[case.entry].cli
    argv = [sys.executable, "-m", module] + _cli_argv(case.entry, path, case.params)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=workdir,
                              preexec_fn=lambda: _limit_memory(memory_limit))
    except subprocess.TimeoutExpired:
        return HANG, f"no exit within {timeout:g} s"
    if done.returncode < 0:
        return CRASH, f"killed by {signal.Signals(-done.returncode).name}: {done.stderr.strip()[-300:]}"
    outcome, detail = judge_cli(case.entry, done.returncode, done.stdout, done.stderr)
    return outcome, "(python -m) " + detail


def _limit_memory(limit: int) -> None:
    if limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# -- the worker process --------------------------------------------------------------------------

def worker_main(fd_in: int, fd_out: int, memory_limit: int, workdir: str) -> None:
    """Answer case specs from fd_in with outcomes on fd_out until the pipe closes."""
    import faulthandler
    import warnings

    faulthandler.enable(sys.stderr)
    _limit_memory(memory_limit)
    warnings.simplefilter("ignore")
    os.chdir(workdir)
    import pyturbo.fit, pyturbo.info, pyturbo.memory, pyturbo.quantize  # noqa: F401,E401  (before the clock starts)

    inbox, outbox = os.fdopen(fd_in, "r"), os.fdopen(fd_out, "w")
    outbox.write(json.dumps({"ready": True}) + "\n")
    outbox.flush()
    for line in inbox:
        spec = json.loads(line)
        print(f"case {spec['index']} {spec['entry']}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        outcome, detail = run_case(spec["entry"], spec["path"], spec["params"], workdir)
        outbox.write(json.dumps({"outcome": outcome, "detail": detail,
                                 "seconds": round(time.perf_counter() - started, 4)}) + "\n")
        outbox.flush()


class Worker:
    """The parent's handle on one worker process: send a case, wait for the outcome or its death."""

    def __init__(self, workdir: Path, memory_limit: int) -> None:
        self.workdir, self.memory_limit = workdir, memory_limit
        self.stderr_path = workdir / "worker-stderr.log"
        to_worker_r, self._to_worker = os.pipe()
        self._from_worker, from_worker_w = os.pipe()
        with open(self.stderr_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(to_worker_r), str(from_worker_w),
                 str(memory_limit), str(workdir)],
                pass_fds=(to_worker_r, from_worker_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log, cwd=str(workdir))
        os.close(to_worker_r)
        os.close(from_worker_w)
        self._buffer = b""
        ready = self._read_line(120.0)
        if ready is None or not json.loads(ready).get("ready"):
            self.kill()
            raise RuntimeError(f"the fuzz worker did not start: {self.stderr_tail()}")

    def _read_line(self, timeout: float) -> "bytes | None":
        """One line from the worker; None on timeout; b'' when the worker is gone."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._from_worker], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_worker, 65536)
            if not chunk:
                return b""
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def run(self, case: Case, path: str, timeout: float) -> "tuple[str, str, float]":
        """(outcome, detail, seconds); after a crash or hang the worker is dead (alive() is False)."""
        spec = {"index": case.index, "entry": case.entry, "path": path, "params": case.params}
        started = time.perf_counter()
        try:
            os.write(self._to_worker, (json.dumps(spec) + "\n").encode())
        except BrokenPipeError:
            pass
        line = self._read_line(timeout)
        seconds = time.perf_counter() - started
        if line is None:
            self.kill()
            return HANG, f"no answer within {timeout:g} s", seconds
        if line == b"":
            code = self.process.wait()
            why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return CRASH, f"{why}: {self.stderr_tail()}", seconds
        answer = json.loads(line)
        return answer["outcome"], answer["detail"], seconds

    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr_tail(self, n: int = 600) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        # What followed the last case marker: the assert message first, then faulthandler's stack.
        tail = text[text.rfind("\ncase ") + 1:] if "\ncase " in text else text
        lines = [line.strip() for line in tail.strip().splitlines()[1:] if line.strip()]
        telling = [line for line in lines if re.search(r"GGML_ASSERT|GGML_ABORT|error|Error", line)]
        return " | ".join(telling + [line for line in lines if line not in telling])[:n]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()

    def close(self) -> None:
        for fd in (self._to_worker, self._from_worker):
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


# -- the campaign --------------------------------------------------------------------------------

@dataclasses.dataclass
class Summary:
    seed: int
    cases: int
    entries: dict           # entry -> Counter of outcomes
    failures: list          # dicts: case, entry, base, mutation, outcome, detail, replay
    mutations: Counter
    bases: Counter
    subprocess_cases: int
    wall_s: float
    case_seconds: dict      # entry -> total seconds in the worker

    @property
    def n_failures(self) -> int:
        return len(self.failures)

    def failure_report(self, limit: int = 30) -> str:
        """The failures, one a line, each with the command that replays it."""
        return "\n".join(f"  [{f['outcome']}] {f['entry']} on {f['base']}, {f['mutation']}: {f['detail']}\n"
                         f"      {f['replay']}" for f in self.failures[:limit])

    def table(self) -> str:
        header = ("entry", "cases") + OUTCOMES
        rows = [header]
        totals = Counter()
        for entry, counts in self.entries.items():
            rows.append((entry, str(sum(counts.values()))) + tuple(str(counts[o]) for o in OUTCOMES))
            totals.update(counts)
        rows.append(("all", str(sum(totals.values()))) + tuple(str(totals[o]) for o in OUTCOMES))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_json(self, command: str) -> dict:
        return {
            "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _git_commit(),
            "uncommitted_changes": _git_dirty(),
            "seed": self.seed,
            "cases": self.cases,
            "failures": self.n_failures,
            "wall_s": round(self.wall_s, 1),
            "subprocess_cases": self.subprocess_cases,
            "entries": {e: {"cases": sum(c.values()), **{o: c[o] for o in OUTCOMES},
                            "seconds": round(self.case_seconds.get(e, 0.0), 1)} for e, c in self.entries.items()},
            "bases": dict(self.bases),
            "mutations": dict(self.mutations.most_common()),
            "failure_cases": self.failures,
        }


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=REPO, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _git_dirty() -> bool:
    """Whether the tree the run tested differs from the commit (tracked files changed)."""
    try:
        return bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, cwd=REPO, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return False


def fuzz(cases: int, seed: int, entries: "list | None" = None, timeout: float = 30.0,
         memory_limit: int = 4 << 30, subprocess_every: int = 40, progress: bool = True,
         workdir: "Path | None" = None, smol: "Path | bool | None" = None, first: int = 0,
         log: "str | None" = None) -> Summary:
    """Run cases first .. first+cases-1 of `seed`, entries in rotation, and count the outcomes
    (log: a file to get one JSON line per case, with its outcome and detail)."""
    from tqdm import tqdm

    entries = list(entries or ENTRY_POINTS)
    # On an abort ggml runs gdb for a backtrace (seconds a crash); the worker's faulthandler says enough.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fuzz-gguf-")))
        bases = build_bases(workdir / "bases", smol)
        summary = Summary(seed, cases, {e: Counter() for e in entries}, [], Counter(), Counter(), 0, 0.0,
                          Counter())
        case_path = workdir / "case.gguf"
        log_file = stack.enter_context(open(log, "w")) if log else None
        worker = None
        bar = tqdm(range(first, first + cases), desc=f"fuzz seed {seed}", unit="case", file=sys.stderr,
                   disable=not progress, smoothing=0.05)
        try:
            for index in bar:
                entry = entries[index % len(entries)]
                case, data = make_case(seed, index, entry, bases, subprocess_every)
                case_path.write_bytes(data)
                if case.subprocess:
                    summary.subprocess_cases += 1
                    t0 = time.perf_counter()
                    outcome, detail = run_cli_subprocess(case, str(case_path), str(workdir), timeout, memory_limit)
                    seconds = time.perf_counter() - t0
                else:
                    if worker is None or not worker.alive():
                        worker = Worker(workdir, memory_limit)
                    outcome, detail, seconds = worker.run(case, str(case_path), timeout)
                summary.entries[entry][outcome] += 1
                summary.case_seconds[entry] += seconds
                summary.mutations[case.mutation.split(" ")[0]] += 1
                summary.bases[case.base] += 1
                if log_file:
                    log_file.write(json.dumps({"case": index, "entry": entry, "base": case.base,
                                               "mutation": case.mutation, "outcome": outcome, "detail": detail,
                                               "seconds": round(seconds, 3)}) + "\n")
                if outcome in FAILURES:
                    summary.failures.append({"case": index, "entry": entry, "base": case.base,
                                             "mutation": case.mutation, "outcome": outcome, "detail": detail,
                                             "replay": case.replay_command()})
                    bar.set_postfix(failures=summary.n_failures)
        finally:
            bar.close()
            if worker is not None:
                worker.close()
    summary.wall_s = time.perf_counter() - started
    return summary


def replay(seed: int, index: int, entry: str, keep: "str | None", smol: "Path | bool | None" = None) -> int:
    """Run one case in this process, with the full traceback of any failure."""
    with tempfile.TemporaryDirectory(prefix="fuzz-gguf-replay-") as tmp:
        bases = build_bases(Path(tmp) / "bases", smol)
        case, data = make_case(seed, index, entry, bases)
        path = Path(keep) if keep else Path(tmp) / "case.gguf"
        path.write_bytes(data)
        print(f"case {index} of seed {seed}: {entry} on {case.base}, {case.mutation}; file {path} "
              f"({len(data)} bytes)")
        spec = ALL_ENTRY_POINTS[entry]
        if spec.cli and spec.cli != "selftest":
            code, out, err = run_cli_in_process(spec.cli, _cli_argv(entry, str(path), case.params))
            print(f"exit {code}\n--- stdout ---\n{out[:3000]}--- stderr ---\n{err}")
            outcome, detail = judge_cli(entry, code, out, err)
        else:
            try:
                outcome, detail = OK, call_entry(entry, str(path), case.params, tmp)
            except BaseException as e:
                traceback.print_exc()
                outcome, detail = judge_exception(entry, e)
        print(f"outcome: {outcome}: {detail}")
        return 1 if outcome in FAILURES else 0


def main(argv: "list | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="index of the first case (to resume a long run)")
    parser.add_argument("--entry", action="append", choices=sorted(ALL_ENTRY_POINTS),
                        help="entry points to fuzz (repeatable; default all)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take before it is a hang")
    parser.add_argument("--memory-limit", type=int, default=4 << 30, help="RLIMIT_AS of the worker (bytes)")
    parser.add_argument("--subprocess-every", type=int, default=40,
                        help="about one command case in N runs as a real `python -m` process (0: none)")
    parser.add_argument("--json", metavar="OUT", help="write the summary as JSON")
    parser.add_argument("--log", metavar="FILE", help="write one JSON line per case (outcome, detail)")
    parser.add_argument("--replay", type=int, metavar="INDEX", help="run one case in this process")
    parser.add_argument("--keep", metavar="PATH", help="with --replay: write the case's file here")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        fd_in, fd_out, limit, workdir = args.worker
        worker_main(int(fd_in), int(fd_out), int(limit), workdir)
        return 0
    if args.replay is not None:
        if not args.entry or len(args.entry) != 1:
            parser.error("--replay needs exactly one --entry")
        return replay(args.seed, args.replay, args.entry[0], args.keep)
    summary = fuzz(args.cases, args.seed, args.entry, args.timeout, args.memory_limit, args.subprocess_every,
                   progress=not args.no_progress, first=args.first, log=args.log)
    print(summary.table())
    print(f"{summary.cases} cases ({summary.subprocess_cases} as real subprocesses) in {summary.wall_s:.1f} s; "
          f"{summary.n_failures} failures")
    if summary.failures:
        print(summary.failure_report())
    if args.json:
        command = "python tests/fuzz_gguf.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary.to_json(command), indent=1) + "\n")
    return 1 if summary.n_failures else 0


if __name__ == "__main__":
    sys.exit(main())
