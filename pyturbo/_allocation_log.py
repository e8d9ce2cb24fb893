"""What llama.cpp's allocation log says a context took: KV cache, recurrent state, compute buffers.

llama.cpp reports its allocations only as log lines (src/llama-kv-cache.cpp,
llama-memory-recurrent.cpp, llama-context.cpp), MiB with two decimals (the
destructor's compute line with four). Context.kv_cache_bytes and memory.measure
both read them through `parse_allocation_log`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from .units import mib_to_bytes

# llama_kv_cache logs its allocation once per cache (two for sliding-window models):
# "llama_kv_cache: size = 15.00 MiB (4096 cells, 30 layers, 1/1 seqs), K (f16): 7.50 MiB, V (f16): 7.50 MiB"
KV_SIZE_LINE = re.compile(
    r"size = +([\d.]+) MiB \( *(\d+) cells, *(\d+) layers.*K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB")
_RECURRENT_LINE = re.compile(r"llama_memory_recurrent.*: size = +[\d.]+ MiB.*R \(\w+\): +([\d.]+) MiB, "
                             r"S \(\w+\): +([\d.]+) MiB")
_COMPUTE_FINAL_LINE = re.compile(r"(\S+) compute buffer size is +([\d.]+) MiB")
_COMPUTE_LINE = re.compile(r"(\S+) compute buffer size = +([\d.]+) MiB")
_OUTPUT_LINE = re.compile(r"(\S+) +output buffer size = +([\d.]+) MiB")
# A context whose K transform is calibrated creates, and frees, a calibration context of
# its own first (csrc/llama/turbo-kv-calibration.cpp); its allocations are not the context's.
_CALIBRATION_BEGIN = "pyturbo_kv_calibrate: begin"
_CALIBRATION_END = "pyturbo_kv_calibrate: end"


@dataclass
class Allocation:
    """Bytes llama.cpp logged for one context, each figure rounded as it printed it."""

    kv_k: int = 0
    kv_v: int = 0
    recurrent: int = 0
    compute: int = 0          # every backend's compute buffer + the output (logits) buffer
    cells: list = field(default_factory=list)       # cells of each KV cache, as logged
    kv_logged: list = field(default_factory=list)   # (K MiB, V MiB) text of each KV cache
    n_rounded: int = 0        # two-decimal MiB figures summed (each off by up to 0.005 MiB)


def parse_allocation_log(lines: Iterable[str]) -> Allocation:
    """The sizes in the log lines of creating (and, for the final compute figure, freeing) a context."""
    sizes = Allocation()
    compute_final, compute_reserved = {}, {}
    calibrating = False
    for line in lines:
        if _CALIBRATION_BEGIN in line or _CALIBRATION_END in line:
            calibrating = _CALIBRATION_BEGIN in line
        elif calibrating:
            continue
        elif (m := KV_SIZE_LINE.search(line)):
            sizes.kv_k += mib_to_bytes(m.group(5))
            sizes.kv_v += mib_to_bytes(m.group(7))
            sizes.cells.append(int(m.group(2)))
            sizes.kv_logged.append((m.group(5), m.group(7)))
            sizes.n_rounded += 2
        elif (m := _RECURRENT_LINE.search(line)):
            sizes.recurrent += mib_to_bytes(m.group(1)) + mib_to_bytes(m.group(2))
            sizes.n_rounded += 2
        elif (m := _COMPUTE_FINAL_LINE.search(line)):
            compute_final[m.group(1)] = mib_to_bytes(m.group(2))
        elif (m := _COMPUTE_LINE.search(line)):
            compute_reserved[m.group(1)] = mib_to_bytes(m.group(2))
        elif (m := _OUTPUT_LINE.search(line)):
            sizes.compute += mib_to_bytes(m.group(2))
            sizes.n_rounded += 1
    compute = compute_final or compute_reserved
    if not compute_final:
        sizes.n_rounded += len(compute_reserved)
    sizes.compute += sum(compute.values())
    return sizes
