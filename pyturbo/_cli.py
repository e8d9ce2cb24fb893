"""What every pyturbo command shares: error reporting, logging, llama.cpp-style flags."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from .errors import PyturboError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_cache_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-k", "--cache-type-k", "-ctk", dest="cache_k", default="f16",
                        metavar="TYPE", help="K cache type (default f16; see pyturbo.cache_types())")
    parser.add_argument("--cache-v", "--cache-type-v", "-ctv", dest="cache_v", default="f16",
                        metavar="TYPE", help="V cache type (default f16)")
    parser.add_argument("-fa", "--flash-attn", dest="flash_attn", default="auto",
                        choices=["on", "off", "auto"], help="flash attention (default auto)")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--threads", dest="threads", type=int, default=None,
                        help="CPU threads (default: all available)")
    parser.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers", type=int,
                        default=0, metavar="N", help="layers to offload to the GPU (default 0)")
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's log on stderr")


def int_list(text: str) -> list[int]:
    """argparse type: "0,4096" -> [0, 4096]."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}") from None


def float_list(text: str) -> list[float]:
    """argparse type: "0.1,0.5" -> [0.1, 0.5]."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}") from None


def str_list(text: str) -> list[str]:
    """argparse type: "f16, q8_0" -> ["f16", "q8_0"]."""
    return [x.strip() for x in text.split(",") if x.strip()]


def setup_logging(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")


def run_main(prog: str, main: Callable[[list[str] | None], int], argv: "list[str] | None" = None) -> int:
    """Run a command's main; a PyturboError becomes one line on stderr and exit code 2."""
    try:
        return main(argv)
    except PyturboError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
