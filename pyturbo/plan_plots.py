"""The planner's figures (pyturbo.fit --plot): what fits a budget per K/V configuration,
and memory against context."""

from __future__ import annotations

import os
from typing import Sequence

from ._report import pyplot
from .gguf import GGUFHeader
from .memory import estimate
from .units import GiB, format_size
from .upstream.allocation import CELL_PADDING, DEFAULT_N_UBATCH
from .upstream.geometry import model_geometry


def plot_budget(results: Sequence, memory: int, path: "str | os.PathLike", model_name: str) -> None:
    """Side by side, one bar per configuration: the longest context that fits the budget
    (with the -ub it needs when not the default) and the KLD against the f16 cache
    (marked when it comes from the SmolLM2 table, not from this model)."""
    plt = pyplot()
    labels = [f"{r.type_k}/{r.type_v}" for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(results) + 1.8), sharey=True)
    rows = range(len(results))
    left.barh(rows, [r.n_ctx for r in results], color="tab:blue")
    for row, r in zip(rows, results):
        note = f"{r.n_ctx}" + (f"  -ub {r.n_ubatch}" if r.n_ubatch != DEFAULT_N_UBATCH else "")
        left.annotate(note, (r.n_ctx, row), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    # Room right of the longest bar for its label.
    left.set_xlim(0, 1.35 * max([r.n_ctx for r in results] + [1]))
    left.set_yticks(list(rows), labels)
    left.invert_yaxis()
    left.set_xlabel("max context (tokens)")
    left.set_title(f"longest context in {format_size(memory)}")
    left.grid(axis="x", alpha=0.3)
    klds = [r.kld if r.kld is not None else 0.0 for r in results]
    reference = [bool(r.kld_source) and not r.kld_source.startswith("measured") for r in results]
    right.barh(rows, klds, color="tab:red")
    for row, r, ref in zip(rows, results, reference):
        text = "unmeasured" if r.kld is None else f"{r.kld:.4g}" + (" (SmolLM2 table)" if ref else "")
        right.annotate(text, (klds[row], row), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    right.set_xlim(0, 1.6 * max(klds + [1e-3]))
    sources = sorted({r.kld_source for r in results if r.kld_source})
    right.set_xlabel("mean KLD vs f16 cache (nats, lower is better)")
    right.set_title("KLD: " + "; ".join(sources) if sources else "KLD")
    right.grid(axis="x", alpha=0.3)
    fig.suptitle(model_name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_memory(header: GGUFHeader, configs: Sequence[tuple], memory: "int | None", path: str,
         max_ctx: "int | None" = None, weights_as: "str | None" = None, **kwargs) -> None:
    """Memory against context length, one line per configuration, the budget as a horizontal line."""
    plt = pyplot()
    geometry = model_geometry(header)
    top = max_ctx or geometry.n_ctx_train or 131072
    n_points = 48
    contexts = sorted({max(CELL_PADDING, round(top ** (i / (n_points - 1)) / CELL_PADDING) * CELL_PADDING)
                       for i in range(n_points)} | {top})
    fig, ax = plt.subplots(figsize=(8, 5))
    for k, v in configs:
        totals = [estimate(header, n, k, v, weight_quant=weights_as, **kwargs).total / GiB for n in contexts]
        ax.plot(contexts, totals, label=f"{k}/{v}")
    if memory is not None:
        ax.axhline(memory / GiB, color="black", linestyle="--", label=f"budget {format_size(memory)}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("memory (GiB)")
    ax.set_title(f"{os.path.basename(str(header.path))}: weights + KV cache + compute buffers")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
