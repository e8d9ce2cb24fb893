"""Quantize a GGUF model's weights, as llama-quantize does: python -m pyturbo.quantize SRC DST TYPE

    python -m pyturbo.quantize model-f16.gguf model-Q4_K_M.gguf Q4_K_M -t 4

TYPE is any name llama-quantize accepts (Q8_0, Q6_K, Q4_K_M, Q2_K, IQ4_XS, F16,
BF16, COPY, ...), in any case. A progress bar (tensors done / total) goes to
stderr and a summary (sizes and bits per weight before and after) to stdout.
Quantizing a file that is already quantized needs --allow-requantize; an
existing DST needs --force.

The Python API is pyturbo.weights: `quantize(src, dst, "q4_K_M")` returns a
QuantizeResult, `select_quant(path, "q4_K_M")` picks (or makes) the file of a quant.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from ._cli import ArgumentParser, add_threads_flag, add_verbose_flag, run_main, setup_logging
from .weights import WEIGHT_TYPES, quantize

PROG = "python -m pyturbo.quantize"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="GGUF model to quantize (16/32-bit, or quantized with --allow-requantize)")
    parser.add_argument("dst", help="GGUF file to write")
    parser.add_argument("type", help=f"weight type, any case: {', '.join(WEIGHT_TYPES)}")
    parser.add_argument("--allow-requantize", action="store_true",
                        help="accept an already-quantized source (quality suffers: two rounding errors)")
    parser.add_argument("--pure", action="store_true",
                        help="one type for every tensor instead of the k-quant mixture")
    parser.add_argument("--imatrix", metavar="FILE", help="importance matrix from llama-imatrix")
    add_threads_flag(parser)
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_verbose_flag(parser)
    return parser


def main(argv: "list[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    result = quantize(args.src, args.dst, args.type, allow_requantize=args.allow_requantize, threads=args.threads,
                      imatrix=args.imatrix, pure=args.pure, overwrite=args.force, progress=not args.verbose)
    print(json.dumps(asdict(result)) if args.json else result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
