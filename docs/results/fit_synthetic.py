"""Writes header-only GGUF files shaped like Llama-3.1-8B and Llama-3-70B and runs pyturbo.fit on them.

    python docs/results/fit_synthetic.py [OUT_DIR]      # prints docs/results/fit-16gb.md

The headers hold the real models' metadata and tensor shapes (f16) but no tensor
data; `python -m pyturbo.fit ... --weights q4_K_M` sizes the weights as
llama-quantize's Q4_K_M preset would make them.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from tiny_gguf import write_header_only  # noqa: E402  (the one header-only GGUF writer)

SHAPES = {
    # name: (n_layer, n_embd, n_head, n_head_kv, head size, n_ff, n_vocab, training context)
    "llama-8b-shape": (32, 4096, 32, 8, 128, 14336, 128256, 131072),
    "llama-70b-shape": (80, 8192, 64, 8, 128, 28672, 128256, 131072),
}
BUDGETS = ("8GiB", "16GiB", "24GiB")


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    print("# What fits: max context per K/V cache at q4_K_M weights in 8, 16 and 24 GiB\n")
    print("Header-only GGUFs with the geometry of Llama-3.1-8B (32 layers, 32 heads, 8 KV heads, head 128,")
    print("n_embd 4096, n_ff 14336, vocab 128256, context 131072) and Llama-3-70B (80 layers, n_embd 8192,")
    print("64 heads, 8 KV heads, n_ff 28672), weights sized as llama-quantize's Q4_K_M. Totals are")
    print("weights + K/V cache + compute buffers (batch 512, flash attention on); \"none\" means not even")
    print("256 tokens fit. Produced by:\n")
    print("    python docs/results/fit_synthetic.py > docs/results/fit-16gb.md\n")
    print("which writes the headers and runs, for each model and budget:\n")
    print("    python -m pyturbo.fit MODEL.gguf --memory BUDGET --weights q4_K_M\n")
    for name, shape in SHAPES.items():
        path = write_header_only(out_dir / f"{name}.gguf", "llama", *shape)
        for budget in BUDGETS:
            command = [sys.executable, "-m", "pyturbo.fit", str(path), "--memory", budget, "--weights", "q4_K_M"]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            print(f"## {name}, {budget}\n")
            print(f"`python -m pyturbo.fit {path.name} --memory {budget} --weights q4_K_M`\n")
            print(output)


if __name__ == "__main__":
    main()
