"""llama.cpp's allocation log lines, read in tests only: pyturbo takes its figures from
libllama (pyturbo.context_memory); the tests check them against what llama.cpp printed."""

from __future__ import annotations

import re

# "llama_kv_cache: size = 15.00 MiB (4096 cells, 30 layers, 1/1 seqs), K (f16): 7.50 MiB, V (f16): 7.50 MiB"
KV_SIZE_LINE = re.compile(
    r"size = +([\d.]+) MiB \( *(\d+) cells, *(\d+) layers.*K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB")
COMPUTE_LINE = re.compile(r"(\S+) compute buffer size = +([\d.]+) MiB")
OUTPUT_LINE = re.compile(r"(\S+) +output buffer size = +([\d.]+) MiB")
# the calibration pass's own context logs between these lines (csrc/llama/turbo-kv-calibration.cpp)
CALIBRATION_BEGIN, CALIBRATION_END = "pyturbo_kv_calibrate: begin", "pyturbo_kv_calibrate: end"


def context_lines(lines):
    """The lines of a context's creation, less those of a calibration pass run inside it."""
    inside = False
    for line in lines:
        if CALIBRATION_BEGIN in line or CALIBRATION_END in line:
            inside = CALIBRATION_BEGIN in line
        elif not inside:
            yield line


def logged_mib(lines) -> dict:
    """{"k": [MiB, ...], "v": [...], "cells": [...], "compute": {buffer: MiB}, "output": {buffer: MiB}}:
    each KV cache's K and V, each buffer type's compute and output buffers, as printed."""
    logged = {"k": [], "v": [], "cells": [], "compute": {}, "output": {}}
    for line in context_lines(lines):
        if (m := KV_SIZE_LINE.search(line)):
            logged["k"].append(float(m.group(5)))
            logged["v"].append(float(m.group(7)))
            logged["cells"].append(int(m.group(2)))
        elif (m := COMPUTE_LINE.search(line)):
            logged["compute"][m.group(1)] = float(m.group(2))
        elif (m := OUTPUT_LINE.search(line)):
            logged["output"][m.group(1)] = float(m.group(2))
    return logged
