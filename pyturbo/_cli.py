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


# The defaults every command shares (llama.cpp's: f16 caches, flash attention auto, all CPUs).
DEFAULT_CACHE_TYPE = "f16"
DEFAULT_FLASH_ATTN = "auto"


def add_cache_flags(parser: argparse.ArgumentParser, many: bool = False) -> None:
    """-ctk/--cache-k and -ctv/--cache-v; with many=True each takes a comma-separated list
    (llama-bench's form), whose every combination the command runs."""
    kind, default_type = (str_list, [DEFAULT_CACHE_TYPE]) if many else (str, DEFAULT_CACHE_TYPE)
    lists = " (comma-separated list)" if many else ""
    parser.add_argument("-ctk", "--cache-k", "--cache-type-k", dest="cache_k", type=kind, default=default_type,
                        metavar="TYPE", help=f"K cache type{lists} (default {DEFAULT_CACHE_TYPE}; "
                                             "see pyturbo.cache_types())")
    parser.add_argument("-ctv", "--cache-v", "--cache-type-v", dest="cache_v", type=kind, default=default_type,
                        metavar="TYPE", help=f"V cache type{lists} (default {DEFAULT_CACHE_TYPE})")


def add_flash_attn_flag(parser: argparse.ArgumentParser, many: bool = False) -> None:
    """-fa/--flash-attn on|off|auto; with many=True a comma-separated list."""
    if many:
        parser.add_argument("-fa", "--flash-attn", dest="flash_attn", type=str_list, default=[DEFAULT_FLASH_ATTN],
                            metavar="on|off|auto", help=f"flash attention, comma-separated list "
                                                       f"(default {DEFAULT_FLASH_ATTN})")
    else:
        parser.add_argument("-fa", "--flash-attn", dest="flash_attn", default=DEFAULT_FLASH_ATTN,
                            choices=["on", "off", "auto"], help=f"flash attention (default {DEFAULT_FLASH_ATTN})")


def add_kv_transform_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kv-transform", dest="kv_transform", default="auto", metavar="auto|off",
                        help="exact K/V transforms for low-bit caches: auto (a calibrated key transform and "
                             "value equalization, where the model allows them), off, or names joined by '+'; "
                             "see pyturbo.kv_transform")


def add_swa_full_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--swa-full", dest="swa_full", action="store_true",
                        help="full-size cache for sliding-window layers (default: the window only, as llama.cpp)")


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--threads", dest="threads", type=int, default=None,
                        help="CPU threads (default: all available)")


# llama.cpp's command-line defaults (common/common.h), which pyturbo's commands share: the
# logical batch (tokens per decode call at most) and the physical batch (tokens per graph
# evaluation, which sizes the compute buffer).
DEFAULT_CLI_N_BATCH = 2048
DEFAULT_CLI_N_UBATCH = 512


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_batch_flags(parser: argparse.ArgumentParser) -> None:
    """-b/--batch-size and -ub/--ubatch-size (dest n_batch, n_ubatch), with llama.cpp's defaults."""
    parser.add_argument("-b", "--batch-size", dest="n_batch", type=positive_int, default=DEFAULT_CLI_N_BATCH,
                        metavar="N", help=f"logical batch: prompt tokens per decode call "
                                          f"(default {DEFAULT_CLI_N_BATCH})")
    parser.add_argument("-ub", "--ubatch-size", dest="n_ubatch", type=positive_int, default=DEFAULT_CLI_N_UBATCH,
                        metavar="N", help=f"physical batch: tokens per evaluation, which sizes the compute "
                                          f"buffer (default {DEFAULT_CLI_N_UBATCH}; pyturbo.fit says when a "
                                          "smaller one fits a longer context)")


def add_ctx_flag(parser: argparse.ArgumentParser, default: "int | None", help: str) -> None:
    """-c/--ctx-size (dest n_ctx), with the command's own default and meaning."""
    parser.add_argument("-c", "--ctx-size", "--ctx", dest="n_ctx", type=int, default=default, metavar="N", help=help)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's log on stderr")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """-t, -ngl and --verbose: what every command that runs a model takes."""
    add_threads_flag(parser)
    parser.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers", type=int,
                        default=None, metavar="N", help="layers to offload to the GPUs or RPC workers, -1 all "
                                                        "(default 0; all with --rpc)")
    add_verbose_flag(parser)


def add_rpc_flags(parser: argparse.ArgumentParser) -> None:
    """--rpc and -ts/--tensor-split, as llama.cpp's (dest rpc, tensor_split)."""
    parser.add_argument("--rpc", dest="rpc", default=None, metavar="HOST:PORT[,...]",
                        help="RPC workers (python -m pyturbo.rpc_worker) that take the offloaded layers and "
                             "their KV cache")
    parser.add_argument("-ts", "--tensor-split", dest="tensor_split", type=float_list, default=None,
                        metavar="N0,N1,...", help="share of the offloaded layers per device, e.g. 1,1 "
                                                  "(default: by free memory)")


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
