"""KL divergence of K/V cache configurations against the f16 cache, on real text.

    results = pyturbo.kl_divergence.kld(model, ["f16/f16", "q8_0/turbo3"], chunks=4)

The measurement follows llama-perplexity --kl-divergence: the text is cut into
chunks of n_ctx tokens (the first of each replaced by BOS when the model adds one)
and the second half of each chunk is scored against the f16/f16 cache. It lives
below the tools so that both `python -m pyturbo.eval kld` and the planner
(`pyturbo.fit --measure`) run the same code.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .assets import default_text
from . import layer_types
from .cache_types import cache_type, kv_configs
from .host import default_threads
from .errors import PyturboError
from .model import Model, open_model


@dataclass
class KLDResult:
    """One K/V configuration against the f16/f16 cache."""

    type_k: str
    type_v: str
    bpv_k: float
    bpv_v: float
    kld: float          # mean KL divergence (reference || this), nats per token
    kld_p99: float      # its 99th percentile over tokens
    ppl: float
    ppl_ratio: float    # ppl / reference ppl
    same_top: float     # share of tokens whose most likely next token matches the reference's
    n_tokens: int       # scored tokens
    seconds: float
    kv_transform: str = "off"   # the exact K/V transforms applied to this configuration


def read_text(text: "str | os.PathLike | None") -> str:
    if text is None:
        return default_text()
    path = Path(text)
    if not path.is_file():
        raise PyturboError(f"text file not found: {path}")
    return path.read_text(encoding="utf-8", errors="replace")


# -- KLD ------------------------------------------------------------------------------------------

def _chunks(model: Model, text: str, n_ctx: int, chunks: "int | None") -> list[list[int]]:
    with model.context(n_ctx=n_ctx, cache_k="f16", cache_v="f16") as ctx:
        tokens = ctx.tokenize(text, add_special=False)
        add_bos = ctx.model.add_bos
    available = len(tokens) // n_ctx
    n = available if chunks is None else min(chunks, available)
    if n < 1:
        raise PyturboError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}")
    out = []
    for i in range(n):
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx]
        if add_bos:
            chunk[0] = model.bos
        out.append(chunk)
    return out


def config_pairs(configs) -> list:
    """[(K, V)] as kv_configs reads them, but a per-layer spec (pyturbo.layer_types) in a
    (K, V) tuple, or in "K/V;K/V" text, stays a spec, checked when its context is made."""
    if isinstance(configs, str) and ";" not in configs:
        return kv_configs(configs)
    items = configs.split(";") if isinstance(configs, str) else list(configs)
    pairs = []
    for item in items:
        parts = item.strip().split("/") if isinstance(item, str) else list(item)
        if len(parts) != 2:
            raise ValueError(f"a configuration is K/V, e.g. q8_0/turbo3 (got {item!r})")
        pairs.append(tuple(p if layer_types.is_layered(p) else cache_type(p.strip() if isinstance(p, str) else p).name
                           for p in parts))
    if not pairs:
        raise ValueError("no K/V configurations given")
    return pairs


def _log_softmax(logits):
    import numpy as np

    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def scored_per_chunk(n_ctx: int) -> int:
    """Tokens kld() scores in a chunk of n_ctx: those after the first half (which gives each
    scored token a context of at least n_ctx/2), but the last, which predicts nothing."""
    return n_ctx - 1 - n_ctx // 2


def kld(model: "Model | str | os.PathLike", configs, text: "str | os.PathLike | None" = None,
        n_ctx: int = 512, chunks: "int | None" = None, n_threads: "int | None" = None,
        flash_attn: str = "auto", progress: bool = True, kv_transform: "str | int" = "auto") -> list[KLDResult]:
    """KLD, PPL and same-top rate of each K/V configuration against the f16/f16 cache.

    kv_transform applies to the configurations measured; the reference is always the
    untransformed f16/f16 cache.

    The reference log-probabilities are computed once and kept as float16 in a
    temporary file (chunks x n_ctx/2 x n_vocab x 2 bytes), deleted at the end.
    """
    import numpy as np

    pairs = config_pairs(configs)
    if n_ctx < 16:
        raise ValueError(f"n_ctx must be at least 16, got {n_ctx}")
    corpus = read_text(text)
    with open_model(model) as model:
        token_chunks = _chunks(model, corpus, n_ctx, chunks)
        first = n_ctx // 2
        n_scored = scored_per_chunk(n_ctx)
        n_threads = n_threads or default_threads()
        bar = tqdm(total=len(token_chunks) * (1 + len(pairs)), desc="kld", unit="chunk",
                   file=sys.stderr, disable=not progress)
        with tempfile.TemporaryDirectory(prefix="pyturbo-kld-") as tmp:
            ref_logp = np.lib.format.open_memmap(Path(tmp) / "reference.npy", mode="w+", dtype=np.float16,
                                                 shape=(len(token_chunks), n_scored, model.n_vocab))
            ref_nll = np.empty((len(token_chunks), n_scored))
            ref_top = np.empty((len(token_chunks), n_scored), dtype=np.int64)
            bar.set_postfix_str("f16/f16 reference")
            with model.context(n_ctx=n_ctx, cache_k="f16", cache_v="f16", flash_attn=flash_attn,
                               n_threads=n_threads, kv_transform="off") as ctx:
                for i, chunk in enumerate(token_chunks):
                    logp = _log_softmax(ctx.score(chunk, first)[:-1])
                    targets = np.array(chunk[first + 1:])
                    ref_logp[i] = logp
                    ref_nll[i] = -logp[np.arange(n_scored), targets]
                    ref_top[i] = logp.argmax(axis=1)
                    bar.update()
            ref_ppl = math.exp(ref_nll.mean())

            results = []
            for cache_k, cache_v in pairs:
                started = time.perf_counter()
                klds, nlls, same = [], [], 0
                with model.context(n_ctx=n_ctx, cache_k=cache_k, cache_v=cache_v,
                                   flash_attn=flash_attn, n_threads=n_threads, kv_transform=kv_transform) as ctx:
                    bar.set_postfix_str(f"{ctx.cache_k_spec}/{ctx.cache_v_spec}")
                    applied = ctx.kv_transform
                    type_k, type_v = ctx.layer_types_k, ctx.layer_types_v
                    for i, chunk in enumerate(token_chunks):
                        logp = _log_softmax(ctx.score(chunk, first)[:-1])
                        reference = ref_logp[i].astype(np.float32)
                        klds.append((np.exp(reference) * (reference - logp)).sum(axis=1))
                        nlls.append(-logp[np.arange(n_scored), np.array(chunk[first + 1:])])
                        same += int((logp.argmax(axis=1) == ref_top[i]).sum())
                        bar.update()
                all_kld = np.concatenate(klds)
                ppl = math.exp(np.concatenate(nlls).mean())
                results.append(KLDResult(
                    type_k=type_k.spec, type_v=type_v.spec, bpv_k=layer_types.mean_bits(type_k, model.geometry, "K"),
                    bpv_v=layer_types.mean_bits(type_v, model.geometry, "V"), kld=float(all_kld.mean()),
                    kld_p99=float(np.percentile(all_kld, 99)), ppl=ppl, ppl_ratio=ppl / ref_ppl,
                    same_top=same / all_kld.size, n_tokens=int(all_kld.size),
                    seconds=time.perf_counter() - started, kv_transform=applied))
            del ref_logp
        bar.close()
        return results
