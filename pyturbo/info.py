"""What a GGUF model file is: python -m pyturbo.info MODEL [--json]

Architecture, parameters, file type and bits per weight, the tensor types,
layers, heads, head sizes, training context, sliding window, chat template,
tokenizer, the KV-cache bytes one token of context costs with f16, q8_0 and
turbo3 caches, and the exact K/V transforms "auto" applies with a pair of cache
types (-ctk/-ctv, default turbo3/turbo3), with why. Read from the GGUF header alone: no tensor data is read and no
model is loaded (pyturbo.gguf's header reader).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._cli import ArgumentParser, add_cache_flags, run_main
from .upstream.allocation import CacheCells, kv_bytes
from .cache_types import cache_type, check_cache
from .errors import CacheTypeError
from .upstream.geometry import model_geometry
from .gguf import read_gguf_header
from .kv_transform import auto_choice
from .units import MiB
from .weights import weight_stats

PROG = "python -m pyturbo.info"

# Cache types whose per-token cost info reports: the default, the usual upstream quant, and turbo3.
KV_REPORT_TYPES = ("f16", "q8_0", "turbo3")
# The cache types whose K/V transforms info reports unless told others (-ctk/-ctv): the
# low-bit pair, where the transforms matter most.
DEFAULT_CACHE_PAIR = ("turbo3", "turbo3")


@dataclass
class ModelInfo:
    """Facts about a GGUF model, from its header."""

    path: str
    name: str
    architecture: str
    n_params: int
    file_type: str               # llama-quantize's name of general.file_type (Q4_K_M, F16, ...)
    bits_per_weight: float       # tensor data bits / weights
    file_bytes: int
    tensor_types: dict           # ggml type -> number of tensors
    tensor_type_params: dict     # ggml type -> weights stored in it
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_size_k: int
    head_size_v: int
    n_ctx_train: int
    sliding_window: int          # tokens; 0 = none
    n_swa_layers: int            # layers that use the sliding window
    chat_template: bool
    tokenizer: str               # tokenizer.ggml.model (and .pre)
    n_vocab: int
    kv_bytes_per_token: dict = field(default_factory=dict)  # cache type -> K+V bytes (None: unusable)
    kv_transform_cache: str = ""  # the K/V cache types kv_transform is for ("turbo3/turbo3")
    kv_transform: str = "off"     # what kv_transform="auto" applies with them (pyturbo.kv_transform)
    kv_transform_reason: str = ""


def kv_bytes_per_token(geometry, type_name: str) -> "int | None":
    """K + V bytes one token of context takes in every attention layer with this cache type
    (None when the model cannot use it: a head size its block does not divide, no rotation)."""
    ctype = cache_type(type_name)
    try:
        check_cache(ctype, ctype, "on", geometry)
    except CacheTypeError:
        return None
    one_cell = CacheCells(n_ctx=1, cells=1, cells_swa=1, n_stream=1, n_ubatch=1)
    k, v = kv_bytes(geometry, one_cell, ctype, ctype, flash_attn=True)
    return k + v


def _tokenizer(metadata: dict) -> str:
    model = metadata.get("tokenizer.ggml.model")
    pre = metadata.get("tokenizer.ggml.pre")
    if model is None:
        return "none"
    return f"{model} ({pre})" if pre else str(model)


def inspect(path: "str | os.PathLike", cache_k: str = DEFAULT_CACHE_PAIR[0],
            cache_v: str = DEFAULT_CACHE_PAIR[1]) -> ModelInfo:
    """Read a GGUF file's header into a ModelInfo; kv_transform is what "auto" applies with
    the cache types cache_k / cache_v."""
    header = read_gguf_header(path)
    geometry = model_geometry(header)
    metadata = header.metadata
    stats = weight_stats(header)
    transforms = auto_choice(header, cache_k, cache_v)
    return ModelInfo(
        path=str(path),
        name=str(metadata.get("general.name", Path(path).name)),
        architecture=header.architecture,
        n_params=stats.n_params,
        file_type=stats.file_type or "unknown",
        bits_per_weight=stats.bits_per_weight,
        file_bytes=Path(path).stat().st_size,
        tensor_types=stats.type_tensors,
        tensor_type_params=stats.type_params,
        n_layer=geometry.n_layer,
        n_embd=geometry.n_embd,
        n_head=geometry.n_head,
        n_head_kv=geometry.n_head_kv,
        head_size_k=geometry.head_size_k,
        head_size_v=geometry.head_size_v,
        n_ctx_train=geometry.n_ctx_train,
        sliding_window=geometry.n_swa,
        n_swa_layers=sum(layer.swa for layer in geometry.layers),
        chat_template="tokenizer.chat_template" in metadata,
        tokenizer=_tokenizer(metadata),
        n_vocab=geometry.n_vocab,
        kv_bytes_per_token={name: kv_bytes_per_token(geometry, name) for name in KV_REPORT_TYPES},
        kv_transform_cache=f"{cache_type(cache_k).name}/{cache_type(cache_v).name}",
        kv_transform=transforms.transforms,
        kv_transform_reason=transforms.reason,
    )


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def to_text(info: ModelInfo) -> str:
    """The report `python -m pyturbo.info` prints: one fact a line."""
    types = ", ".join(f"{name} {count} ({100 * info.tensor_type_params[name] / info.n_params:.1f}% of weights)"
                      for name, count in info.tensor_types.items())
    kv = ", ".join(f"{name} {n} B" if n is not None else f"{name} unusable"
                   for name, n in info.kv_bytes_per_token.items())
    window = (f"{info.sliding_window} tokens on {info.n_swa_layers} of {info.n_layer} layers"
              if info.sliding_window else "none")
    rows = [
        ("file", f"{info.path} ({info.file_bytes / MiB:.2f} MiB)"),
        ("name", info.name),
        ("architecture", info.architecture),
        ("parameters", _count(info.n_params)),
        ("file type", f"{info.file_type}, {info.bits_per_weight:.2f} bits per weight"),
        ("tensor types", types),
        ("layers", str(info.n_layer)),
        ("embedding", str(info.n_embd)),
        ("heads", f"{info.n_head}, KV heads {info.n_head_kv}"),
        ("head size", f"K {info.head_size_k}, V {info.head_size_v}"),
        ("training context", str(info.n_ctx_train)),
        ("sliding window", window),
        ("chat template", "yes" if info.chat_template else "no"),
        ("tokenizer", f"{info.tokenizer}, {info.n_vocab} tokens"),
        ("KV per token", kv),
        ("KV transforms", f"{info.kv_transform} with kv_transform=auto and a {info.kv_transform_cache} cache: "
                          f"{info.kv_transform_reason}"),
    ]
    width = max(len(label) for label, _ in rows)
    return "".join(f"{label:<{width}}  {value}\n" for label, value in rows)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="GGUF file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_cache_flags(parser)
    parser.set_defaults(cache_k=DEFAULT_CACHE_PAIR[0], cache_v=DEFAULT_CACHE_PAIR[1])
    return parser


def main(argv: "list[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    info = inspect(args.model, args.cache_k, args.cache_v)
    sys.stdout.write(json.dumps(asdict(info), indent=2) + "\n" if args.json else to_text(info))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
