"""KLDs of K/V cache configurations measured on one model file, kept in pyturbo's cache dir.

    entries = pyturbo.kld_cache.measure("model.gguf", [("q8_0", "turbo3"), ("turbo4", "turbo4")])
    entries = pyturbo.kld_cache.cached("model.gguf")    # what earlier measurements left, or {}

A record per model file, named by the file's sha256 (cache_dir()/kld/<sha256>.json),
holds one entry per configuration with the settings it was measured with (chunks,
chunk size, a digest of the text). measure() runs pyturbo.kl_divergence.kld only for
the configurations without an entry for these settings, so asking again is instant.
cached() hashes the file only when a record of the same file size exists, so a
planner that finds nothing measured never reads a 40 GB file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from . import kl_divergence
from .assets import cache_dir
from .weights import source_digest

# Chunks of 512 tokens the planner measures by default: a few, so that it takes
# minutes, not hours (SmolLM2's table used 10; the ranking is already stable at 4).
DEFAULT_CHUNKS = 4
DEFAULT_CHUNK_TOKENS = 512

# The reference configuration: its KLD against itself is 0 by definition, never run.
REFERENCE = ("f16", "f16")

RECORD_VERSION = 1


@dataclass(frozen=True)
class MeasuredKLD:
    """One configuration's KLD on one model, and what it was measured with."""

    kld: float
    chunks: int          # chunks scored
    chunks_asked: int    # chunks asked for (more than scored when the text is short)
    n_ctx: int           # tokens per chunk
    text: str            # sha256 of the text (first 16 hex digits)
    kv_transform: str    # the exact K/V transforms that applied

    def source(self, model_name: str) -> str:
        return f"measured: {model_name}, {self.chunks} chunks"


def records_dir() -> Path:
    return cache_dir() / "kld"


def _config_key(config: Sequence[str]) -> str:
    return f"{config[0]}/{config[1]}"


def _read_record(path: Path) -> "dict | None":
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("version") == RECORD_VERSION else None


def _entries(record: dict) -> dict:
    entries = {}
    for key, fields in record.get("results", {}).items():
        k, _, v = key.partition("/")
        entries[(k, v)] = MeasuredKLD(**fields)
    return entries


def cached(model: "str | os.PathLike") -> dict:
    """{(K, V): MeasuredKLD} measured earlier on this model file, or {} (no record)."""
    path = Path(model)
    size = path.stat().st_size
    folder = records_dir()
    if not folder.is_dir():
        return {}
    same_size = [p for p in folder.glob("*.json") if (_read_record(p) or {}).get("size") == size]
    if not same_size:
        return {}
    record = _read_record(folder / f"{source_digest(path)}.json")
    return _entries(record) if record else {}


def text_digest(text: "str | os.PathLike | None") -> str:
    """What identifies the text a KLD was measured on (the default license texts, or a file)."""
    return hashlib.sha256(kl_divergence.read_text(text).encode("utf-8")).hexdigest()[:16]


def measure(model: "str | os.PathLike", configs: Sequence[tuple], chunks: int = DEFAULT_CHUNKS,
            text: "str | os.PathLike | None" = None, n_ctx: int = DEFAULT_CHUNK_TOKENS,
            n_threads: "int | None" = None, progress: bool = True) -> dict:
    """{(K, V): MeasuredKLD} for every configuration, measured now where the cache has no
    entry with these settings (chunks, n_ctx, text), and stored for the next call."""
    path = Path(model)
    digest = source_digest(path)
    record_path = records_dir() / f"{digest}.json"
    record = _read_record(record_path) or {"version": RECORD_VERSION, "model": path.name, "sha256": digest,
                                           "size": path.stat().st_size, "results": {}}
    known = _entries(record)
    text_id = text_digest(text)
    wanted = [tuple(c) for c in configs]

    def current(config) -> bool:
        entry = known.get(config)
        return entry is not None and (entry.chunks_asked, entry.n_ctx, entry.text) == (chunks, n_ctx, text_id)

    missing = [c for c in wanted if not current(c) and c != REFERENCE]
    fresh, scored = {}, chunks
    if missing:
        results = kl_divergence.kld(path, [_config_key(c) for c in missing], text=text, n_ctx=n_ctx, chunks=chunks,
                                    n_threads=n_threads, progress=progress)
        # kld() stops at the chunks the text holds: record how many were scored.
        scored = results[0].n_tokens // kl_divergence.scored_per_chunk(n_ctx)
        # one result per asked configuration, in order; keyed as asked (a per-layer spec
        # comes back in its canonical form, e.g. "q4_0@1,q4_0@0" as "q4_0@0-1")
        assert len(results) == len(missing)
        for config, r in zip(missing, results):
            fresh[config] = MeasuredKLD(kld=r.kld, chunks=scored, chunks_asked=chunks, n_ctx=n_ctx,
                                                      text=text_id, kv_transform=r.kv_transform)
    if REFERENCE in wanted and not current(REFERENCE):
        fresh[REFERENCE] = MeasuredKLD(kld=0.0, chunks=scored, chunks_asked=chunks, n_ctx=n_ctx, text=text_id,
                                       kv_transform="off")
    if fresh:
        known.update(fresh)
        record["results"] = {_config_key(c): asdict(e) for c, e in known.items()}
        record_path.parent.mkdir(parents=True, exist_ok=True)
        partial = record_path.with_name(f".{record_path.name}.{os.getpid()}")
        partial.write_text(json.dumps(record, indent=1))
        os.replace(partial, record_path)
    return {c: known[c] for c in wanted}
