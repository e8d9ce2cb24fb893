"""Writing result records (dataclasses) as markdown, JSON, JSON lines or CSV."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from typing import Callable, Sequence

from .errors import PyturboError

OUTPUT_FORMATS = ("md", "json", "jsonl", "csv")


def as_dicts(records: Sequence) -> list[dict]:
    return [dataclasses.asdict(r) for r in records]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A markdown table; `right` marks the columns aligned right (numbers)."""
    rule = ["---:" if r else "---" for r in right]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render(records: Sequence, fmt: str, to_markdown: Callable[[Sequence], str]) -> str:
    """records in fmt; markdown is the caller's table, the others carry every field."""
    if fmt == "md":
        return to_markdown(records)
    dicts = as_dicts(records)
    if fmt == "json":
        return json.dumps(dicts, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(d) + "\n" for d in dicts)
    if fmt == "csv":
        out = io.StringIO()
        fields = [f.name for f in dataclasses.fields(records[0])] if records else []
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for d in dicts:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in d.items()})
        return out.getvalue()
    raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")


def emit(records: Sequence, fmt: str, to_markdown: Callable[[Sequence], str], plot_path: "str | None" = None,
         plot: "Callable[[Sequence, str], None] | None" = None) -> None:
    """Print records in fmt on stdout and, when plot_path is given, draw them into it with plot."""
    sys.stdout.write(render(records, fmt, to_markdown))
    if plot_path:
        plot(records, plot_path)


def pyplot():
    """matplotlib.pyplot with a file-only backend, or a clear error if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise PyturboError("plots need matplotlib: pip install matplotlib (or pyturbo[plot])") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
