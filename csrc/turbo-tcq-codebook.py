"""Train the reconstruction tables of turbo3t and turbo2t and write csrc/turbo-tcq-tables.h.

    python csrc/turbo-tcq-codebook.py --lib build-dev/bin    # the folder with libggml-base
    python csrc/turbo-tcq-codebook.py --glsl-only            # only csrc/vulkan's copy, from the header

Generalized Lloyd training on the trellis (as in TCQ and QTIP): encode unit-variance
Gaussian blocks of 64 values (llama.cpp's Hadamard rotation makes cache blocks close to
that) with the current table by the library's own Viterbi search (turbo_tcq_viterbi,
csrc/turbo-tcq.c, the encoder the cache uses), move every entry to the mean of the
values whose walk passed through its state, and repeat. It starts from a seeded Gaussian
table; the final table is rounded to fp16 (GPU backends keep it in shared memory as fp16)
and its per-value MSE is measured on separate blocks and written into the header.
Training data, rounds and seeds are fixed, so the same library gives the same file.
"""
from __future__ import annotations

import argparse
import ctypes
import re
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

QK = 64
TYPES = {"turbo3t": 3, "turbo2t": 2}          # name: bits per value
HEADER = Path(__file__).with_name("turbo-tcq-tables.h")
GLSL = Path(__file__).with_name("vulkan") / "turbo-tcq-tables.glsl"   # the Vulkan shaders' copy


def load_viterbi(lib_dir: Path):
    names = ["libggml-base.so", "libggml-base.dylib", "ggml-base.dll"]
    path = next((lib_dir / n for n in names if (lib_dir / n).exists()), None)
    if path is None:
        sys.exit(f"no libggml-base in {lib_dir}")
    lib = ctypes.CDLL(str(path))
    fn = lib.turbo_tcq_viterbi
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    return fn


def unit_blocks(n_blocks: int, seed: int) -> np.ndarray:
    """Gaussian blocks scaled to unit variance, as the encoder scales each block."""
    x = np.random.default_rng(seed).standard_normal((n_blocks, QK)).astype(np.float32)
    return (x / np.sqrt(np.mean(x * x, axis=1, keepdims=True))).astype(np.float32)


def encode(viterbi, blocks: np.ndarray, table: np.ndarray, k: int) -> np.ndarray:
    """The trellis state of every value (n_blocks x 64)."""
    table = np.ascontiguousarray(table, dtype=np.float32)
    states = np.zeros(blocks.shape, dtype=np.uint16)
    for y, s in zip(blocks, states):
        viterbi(y.ctypes.data, table.ctypes.data, k, s.ctypes.data)
    return states


def mse(blocks: np.ndarray, states: np.ndarray, table: np.ndarray) -> float:
    return float(np.mean((blocks - table[states]) ** 2))


def train(viterbi, k: int, rounds: int, n_blocks: int) -> np.ndarray:
    n_states = 64 << k
    table = np.random.default_rng(1000 + k).standard_normal(n_states).astype(np.float32)
    blocks = unit_blocks(n_blocks, seed=k)
    values = blocks.reshape(-1).astype(np.float64)
    for _ in tqdm(range(rounds), desc=f"train k={k}", unit="round"):
        states = encode(viterbi, blocks, table, k).reshape(-1)
        sums = np.bincount(states, weights=values, minlength=n_states)
        counts = np.bincount(states, minlength=n_states)
        used = counts > 0
        table[used] = (sums[used] / counts[used]).astype(np.float32)
    return table.astype(np.float16).astype(np.float32)


def c_table(name: str, table: np.ndarray) -> str:
    rows = []
    for i in range(0, len(table), 8):
        rows.append("    " + " ".join(f"{v: .8e}f," for v in table[i:i + 8]))
    return f"GGML_TABLE_BEGIN(float, kvalues_{name}, {len(table)})\n" + "\n".join(rows) + "\nGGML_TABLE_END()\n"


def header_tables(text: str) -> "dict[str, np.ndarray]":
    """The tables of a generated header, by type name."""
    tables = {}
    for name, size, body in re.findall(r"GGML_TABLE_BEGIN\(float, kvalues_(\w+), (\d+)\)(.*?)GGML_TABLE_END", text, re.S):
        values = np.array([float(v) for v in re.findall(r"[-+0-9.e]+(?=f,)", body)], dtype=np.float32)
        assert len(values) == int(size), (name, len(values), size)
        tables[name] = values
    return tables


def glsl_file(tables: "dict[str, np.ndarray]") -> str:
    """The same tables as GLSL constants (csrc/vulkan/turbo-types.glsl includes them): floats
    per type, and all of them as fp16 pairs in one array for flash attention's shared copy."""
    parts = []
    for name, table in tables.items():
        rows = [" " * 4 + " ".join(f"{v: .8e}," for v in table[i:i + 8]) for i in range(0, len(table), 8)]
        rows[-1] = rows[-1].rstrip(",")
        parts.append(f"const float kvalues_{name}[{len(table)}] = float[{len(table)}](\n" + "\n".join(rows) + ");\n")
    halves = np.concatenate(list(tables.values())).astype(np.float16).view(np.uint16).astype(np.uint32)
    pairs = halves[0::2] | (halves[1::2] << 16)
    rows = [" " * 4 + " ".join(f"0x{v:08x}u," for v in pairs[i:i + 8]) for i in range(0, len(pairs), 8)]
    rows[-1] = rows[-1].rstrip(",")
    offsets = np.cumsum([0] + [len(t) for t in tables.values()])
    parts.append("// " + ", ".join(f"{name} from entry {o}" for name, o in zip(tables, offsets)) +
                 "; entry i is the half in bits 16*(i % 2) of word i / 2\n"
                 f"const uint kvalues_turbo_tcq_fp16x2[{len(pairs)}] = uint[{len(pairs)}](\n" + "\n".join(rows) + ");\n")
    return ("// pyturbo: the trellis types' reconstruction tables for the Vulkan shaders, the values of\n"
            "// csrc/turbo-tcq-tables.h. Generated by csrc/turbo-tcq-codebook.py: do not edit.\n\n" + "\n".join(parts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", type=Path, help="folder with libggml-base")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--blocks", type=int, default=8192, help="training blocks of 64 values")
    ap.add_argument("--glsl-only", action="store_true", help="write only the GLSL copy of the existing header")
    args = ap.parse_args(argv)
    if args.glsl_only:
        GLSL.write_text(glsl_file(header_tables(HEADER.read_text())))
        print(f"wrote {GLSL}")
        return 0
    if args.lib is None:
        ap.error("--lib is required to train")
    viterbi = load_viterbi(args.lib)

    test = unit_blocks(4096, seed=99)
    parts = []
    for name, k in TYPES.items():
        table = train(viterbi, k, args.rounds, args.blocks)
        err = mse(test, encode(viterbi, test, table, k), table)
        print(f"{name}: MSE per value {err:.5f} on 4096 held-out unit-variance Gaussian blocks")
        parts.append(f"// {name}: {64 << k} states, k={k}; MSE per unit-variance value {err:.5f}\n"
                     + c_table(name, table))
    HEADER.write_text(
        "// pyturbo: reconstruction tables of the trellis-coded types, indexed by trellis state.\n"
        "// Generated by csrc/turbo-tcq-codebook.py "
        f"(--rounds {args.rounds} --blocks {args.blocks}): do not edit.\n"
        "// Every value is exactly representable in fp16. Included by turbo-common.h.\n\n"
        + "\n".join(parts))
    GLSL.write_text(glsl_file(header_tables(HEADER.read_text())))
    print(f"wrote {HEADER} and {GLSL}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
