"""Check that every device computes what the CPU computes, for every cache pair.

    python -m pyturbo.selftest [MODEL] [-ngl 99] [--device CUDA0] [--pairs f16/f16,q8_0/turbo3]

For each K/V cache pair the CPU evaluates a prompt of real text and its cache is
saved (Context.save_state). Every device then loads that same cache and, at each
of --probes positions, cuts it back to the position and computes the next
token's logits:

- "decode": that one token alone (the single-token kernels);
- "prefill": that token as the first of a batch of --batch tokens (the prefill
  kernels; only the first row is compared).

Each probe sees a cache the CPU wrote, so a device's result differs from the
CPU's by one forward pass of rounding, not by rounding fed back through the
whole prompt. The reference is the CPU's decode probes (one thread); the CPU is
checked with its prefill probes against them, each accelerator (CUDA, Metal,
RPC, with -ngl layers on it) in both modes.

What "the same" means: a quantized model's activations are quantized to 8 bits
inside every matmul and a low-bit cache quantizes each new key, so two correct
kernels that agree to 1e-6 (the CPU's two flash-attention paths do, on random
data) still move some logits by a rounding step. A row passes when its KL
divergence from the reference (mean over probes) is below --max-kld or below
what the cache pair itself costs (the KLD of the pair's reference from the f16
cache's), or below twice what the device's own arithmetic costs (llama.cpp's
weight kernels: its f16 cache's KLD from the CPU's, measured first; at most
1e-2), and the top token agrees at --min-top1 of the probes: a wrong kernel
costs more than the cache type and the device's own rounding do. docs/results/selftest-cpu.md has the CPU
figures. Exit code 1 when a row fails, 2 on a usage error.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Sequence

from tqdm import tqdm

from ._cli import (ArgumentParser, add_kv_transform_flag, add_threads_flag, add_verbose_flag, run_main,
                   setup_logging, str_list)
from ._report import markdown_table
from .assets import default_model, default_text
from .cache_types import check_cache, flash_attn_mode, kv_configs
from .host import default_threads
from .devices import Device, devices, find_offload_devices, offload_devices
from .errors import CacheTypeError, PyturboError
from .model import Model
from .rpc import connect_workers, parse_endpoints

PROG = "python -m pyturbo.selftest"

# f16 and q8_0 are llama.cpp's own kernels, there to tell a pyturbo fault from a backend's
DEFAULT_PAIRS = ("f16/f16,q8_0/q8_0,turbo2/turbo2,turbo3/turbo3,turbo4/turbo4,"
                 "q8_0/turbo2,q8_0/turbo3,q8_0/turbo4,turbo3t/turbo3t,turbo2t/turbo2t,q8_0/turbo3t")
DEFAULT_MAX_KLD = 1e-3
# A device's own arithmetic (llama.cpp's weight kernels, measured on the f16 cache) moves its
# logits from the CPU's too: up to this many times that, capped, a row is still the same.
DEVICE_FLOOR_FACTOR = 2.0
DEVICE_FLOOR_CAP = 1e-2
DEFAULT_MIN_TOP1 = 0.5
PROMPT_TOKENS = 48  # the cache every probe starts from holds at least this many tokens


@dataclass
class SelftestRow:
    """One device, one kind of kernel, one cache pair, against the CPU's decode probes."""

    device: str          # "CPU", "CUDA0", ...
    mode: str            # "decode": one token per evaluation; "prefill": first row of a batch
    type_k: str
    type_v: str
    kv_transform: str    # the exact K/V transforms applied (the same on both sides)
    n_probes: int
    max_abs_diff: float  # largest |logit difference| over every probe and token
    kld: float           # mean over probes of KL(reference || this)
    top1: float          # fraction of probes whose top token is the reference's
    pair_kld: float      # what the pair itself costs: KL(f16 cache || the pair's reference), mean over probes
    passed: bool
    note: str = ""       # why a pair was not run on this model
    device_kld: float = 0.0  # what the device's own arithmetic costs: its f16 cache's KLD from the CPU's


def compare_logits(reference, test) -> "tuple[float, float, float]":
    """(max |difference|, mean KL(reference || test), top-token agreement) of two [positions, vocab] arrays."""
    import numpy as np

    reference = reference.astype(np.float64)
    test = test.astype(np.float64)
    max_abs_diff = float(np.abs(reference - test).max())
    log_p = reference - reference.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    log_q = test - test.max(axis=1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(axis=1, keepdims=True))
    kld = float((np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())
    top1 = float((reference.argmax(axis=1) == test.argmax(axis=1)).mean())
    return max_abs_diff, max(kld, 0.0), top1


def prompt_tokens(model: Model, n_tokens: int) -> list[int]:
    """The first n_tokens of pyturbo's reference text, BOS first where the model wants one."""
    tokens = model.tokenize(default_text(), add_special=True)
    if len(tokens) < n_tokens:
        raise PyturboError(f"the reference text has only {len(tokens)} tokens")
    return tokens[:n_tokens]


@dataclass
class ProbePlan:
    tokens: list   # the prompt, long enough for the last probe's batch
    first: int     # position of the first probe
    n_probes: int
    batch: int     # tokens per evaluation in prefill probes

    @property
    def n_ctx(self) -> int:
        return len(self.tokens)


def shared_cache(model: Model, plan: ProbePlan, type_k: str, type_v: str, n_threads: int,
                 kv_transform: str) -> "tuple[bytes, str]":
    """The CPU's cache after the prompt up to the last probe (state bytes), and the transform applied."""
    with model.context(n_ctx=plan.n_ctx, cache_k=type_k, cache_v=type_v, flash_attn="on", n_threads=n_threads,
                       kv_transform=kv_transform) as ctx:
        ctx.score(plan.tokens[:plan.first + plan.n_probes])
        return ctx.save_state(sequence_only=True), ctx.kv_transform


def probe(model: Model, plan: ProbePlan, type_k: str, type_v: str, state: bytes, width: int, n_threads: int,
          kv_transform: str):
    """Logits of the token at each probe position, evaluated on the shared cache cut back to that
    position, alone (width 1) or as the first of `width` tokens: [n_probes, n_vocab]."""
    import numpy as np

    rows = []
    with model.context(n_ctx=plan.n_ctx, cache_k=type_k, cache_v=type_v, flash_attn="on", n_threads=n_threads,
                       n_batch=width, n_ubatch=width, kv_transform=kv_transform) as ctx:
        # a context whose transform differs from the saved cache's refuses it (StateError)
        ctx.load_state(state)
        for position in range(plan.first, plan.first + plan.n_probes):
            ctx.truncate(position)
            rows.append(ctx.score_next(plan.tokens[position:position + width])[0])
    return np.stack(rows)


def select_devices(names: "Sequence[str] | None") -> list[Device]:
    """The accelerators to test: those named (the CPU, always tested, may be among them), or
    every one that takes layers."""
    if names is None:
        return offload_devices()
    return find_offload_devices([name for name in names if name != "CPU"])


def usable_pairs(model: Model, pairs) -> "tuple[list, list[SelftestRow]]":
    """The pairs this model can run with flash attention, and a row saying why for each other one."""
    usable, skipped = [], []
    for type_k, type_v in pairs:
        try:
            check_cache(type_k, type_v, flash_attn_mode("on"), model.geometry)
        except CacheTypeError as e:
            skipped.append(SelftestRow("CPU", "-", type_k.name, type_v.name, "-", 0, 0.0, 0.0, 0.0, 0.0, True,
                                       note=str(e)))
        else:
            usable.append((type_k.name, type_v.name))
    return usable, skipped


@dataclass
class PairReference:
    state: bytes       # the CPU's cache, which every device's probes start from
    kv_transform: str
    logits: object     # the CPU's decode probes
    pair_kld: float    # KL(f16 cache || this pair), mean over probes


def judge(device: str, mode: str, type_k: str, type_v: str, reference: PairReference, logits, max_kld: float,
          min_top1: float, device_kld: float = 0.0) -> SelftestRow:
    max_abs_diff, kld, top1 = compare_logits(reference.logits, logits)
    floor = min(DEVICE_FLOOR_FACTOR * device_kld, DEVICE_FLOOR_CAP)
    passed = kld < max(max_kld, reference.pair_kld, floor) and top1 >= min_top1
    return SelftestRow(device, mode, type_k, type_v, reference.kv_transform, len(logits), max_abs_diff, kld, top1,
                       reference.pair_kld, passed, device_kld=device_kld)


def selftest(model_path=None, pairs: str = DEFAULT_PAIRS, n_probes: int = 16, batch: int = 24,
             n_gpu_layers: int = 99, device_names: "Sequence[str] | None" = None, n_threads: "int | None" = None,
             kv_transform: str = "auto", max_kld: float = DEFAULT_MAX_KLD, min_top1: float = DEFAULT_MIN_TOP1,
             progress: bool = True) -> list[SelftestRow]:
    """Run the checks described in the module docstring; one SelftestRow per device, mode and pair."""
    if n_probes < 1 or batch < 2:
        raise PyturboError(f"need at least 1 probe and a batch of at least 2 (got {n_probes} probes, batch {batch})")
    path = model_path or default_model()
    n_threads = n_threads or default_threads()
    accelerators = select_devices(device_names)
    pairs = kv_configs(pairs)
    rows: list[SelftestRow] = []

    with Model(path) as cpu_model:
        plan = ProbePlan(prompt_tokens(cpu_model, PROMPT_TOKENS + n_probes + batch), PROMPT_TOKENS, n_probes, batch)
        usable, skipped = usable_pairs(cpu_model, pairs)
        rows += skipped
        bar = tqdm(total=1 + len(accelerators) + len(usable) * (2 + 2 * len(accelerators)), desc="selftest", unit="run",
                   disable=not progress, file=sys.stderr)
        bar.set_postfix_str("CPU f16/f16 baseline")
        f16_state, _ = shared_cache(cpu_model, plan, "f16", "f16", n_threads, "off")
        f16_logits = probe(cpu_model, plan, "f16", "f16", f16_state, 1, 1, "off")
        bar.update()
        references = {}
        for type_k, type_v in usable:
            bar.set_postfix_str(f"CPU {type_k}/{type_v}")
            state, transform = shared_cache(cpu_model, plan, type_k, type_v, n_threads, kv_transform)
            logits = probe(cpu_model, plan, type_k, type_v, state, 1, 1, kv_transform)
            bar.update()
            reference = PairReference(state, transform, logits, compare_logits(f16_logits, logits)[1])
            references[type_k, type_v] = reference
            prefill = probe(cpu_model, plan, type_k, type_v, state, batch, n_threads, kv_transform)
            bar.update()
            rows.append(judge("CPU", "prefill", type_k, type_v, reference, prefill, max_kld, min_top1))

    for device in accelerators:
        with Model(path, n_gpu_layers=n_gpu_layers, devices=[device.name]) as model:
            # the device's own arithmetic, on the f16 cache the CPU wrote (llama.cpp's kernels only)
            device_kld = {mode: compare_logits(f16_logits, probe(model, plan, "f16", "f16", f16_state, width, n_threads,
                                                                 "off"))[1]
                          for mode, width in (("decode", 1), ("prefill", batch))}
            bar.update()
            for type_k, type_v in usable:
                reference = references[type_k, type_v]
                for mode, width in (("decode", 1), ("prefill", batch)):
                    bar.set_postfix_str(f"{device.name} {mode} {type_k}/{type_v}")
                    logits = probe(model, plan, type_k, type_v, reference.state, width, n_threads, kv_transform)
                    bar.update()
                    rows.append(judge(device.name, mode, type_k, type_v, reference, logits, max_kld, min_top1,
                                      device_kld[mode]))
    bar.close()
    return rows


def rows_to_markdown(rows: Sequence[SelftestRow]) -> str:
    header = ["device", "mode", "K", "V", "kv_transform", "probes", "max |Δlogit|", "KLD vs CPU", "top-1",
              "pair's KLD vs f16", "device's f16 KLD", "result"]
    body = []
    for r in rows:
        if r.note:
            body.append([r.device, "-", r.type_k, r.type_v, "-", "-", "-", "-", "-", "-", "-", f"n/a: {r.note}"])
            continue
        body.append([r.device, r.mode, r.type_k, r.type_v, r.kv_transform, str(r.n_probes), f"{r.max_abs_diff:.3f}",
                     f"{r.kld:.2e}", f"{100 * r.top1:.0f}%", f"{r.pair_kld:.2e}",
                     f"{r.device_kld:.2e}" if r.device != "CPU" else "-", "pass" if r.passed else "FAIL"])
    right = [False] * 5 + [True] * 6 + [False]
    return markdown_table(header, body, right)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=None, help="GGUF file (default: SmolLM2-135M, fetched once)")
    parser.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers", type=int, default=99,
                        metavar="N", help="layers on each accelerator under test (default 99: all)")
    parser.add_argument("--device", dest="devices", type=str_list, default=None, metavar="NAME[,NAME]",
                        help="accelerators to test (default: every one this build sees; the CPU always)")
    parser.add_argument("--list-devices", action="store_true", help="list the devices and exit")
    parser.add_argument("--rpc", default=None, metavar="HOST:PORT[,...]",
                        help="connect these RPC workers (python -m pyturbo.rpc_worker) first: their devices "
                             "are listed and tested as accelerators")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, metavar="K/V[,K/V]",
                        help=f"cache pairs (default {DEFAULT_PAIRS})")
    parser.add_argument("--probes", type=int, default=16, help="probe positions (default 16)")
    parser.add_argument("--batch", type=int, default=24,
                        help="tokens per prefill probe (default 24: past the single-token kernels of CUDA and Metal)")
    parser.add_argument("--max-kld", type=float, default=DEFAULT_MAX_KLD,
                        help=f"a KLD below this passes whatever the pair costs (default {DEFAULT_MAX_KLD:g})")
    parser.add_argument("--min-top1", type=float, default=DEFAULT_MIN_TOP1,
                        help=f"smallest top-token agreement that passes (default {DEFAULT_MIN_TOP1:g})")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    add_threads_flag(parser)
    add_kv_transform_flag(parser)
    add_verbose_flag(parser)
    return parser


def main(argv: "list[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    connect_workers(parse_endpoints(args.rpc))
    if args.list_devices:
        for device in devices():
            print(f"{device.name}: {device.description} ({device.kind}, "
                  f"{device.memory_free / 2**30:.1f} of {device.memory_total / 2**30:.1f} GiB free)")
        return 0
    rows = selftest(args.model, args.pairs, args.probes, args.batch, args.n_gpu_layers, args.devices, args.threads,
                    args.kv_transform, args.max_kld, args.min_top1)
    sys.stdout.write(rows_to_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    failed = [r for r in rows if not r.passed]
    tested = sorted({r.device for r in rows if not r.note})
    summary = f"\n{len(rows) - len(failed)}/{len(rows)} passed on {', '.join(tested)}"
    if failed:
        summary += "; FAILED: " + ", ".join(f"{r.device} {r.mode} {r.type_k}/{r.type_v}" for r in failed)
    print(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
