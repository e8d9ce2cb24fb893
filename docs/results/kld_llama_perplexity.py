"""KLD of K/V cache types against an f16 cache, measured with llama-perplexity.

Runs `llama-perplexity --kl-divergence` from the developer tools (README,
"Developing") once per K/V configuration against one saved f16/f16 base, and
prints one JSON record per configuration (type_k, type_v, bpv_k, bpv_v, kld,
kld_p99, ppl, ppl_ratio, same_top). The text is pyturbo's default text
(pyturbo.assets.default_text: the Debian license texts, each file once).

    python docs/results/kld_llama_perplexity.py --bin build-dev/bin \\
        --model ~/.cache/pyturbo/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --configs q8_0/q8_0,turbo3/turbo3 > results.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from pyturbo import cache_type
from pyturbo.assets import default_text

def perplexity(args, text: Path, type_k: str, type_v: str, *extra: str) -> str:
    command = [str(Path(args.bin) / "llama-perplexity"), "-m", args.model, "-f", str(text),
               "-c", str(args.ctx), "--chunks", str(args.chunks), "-t", str(args.threads),
               "-fa", "on", "-ctk", type_k, "-ctv", type_v, *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"llama-perplexity failed for {type_k}/{type_v}:\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def parse_kld_report(log: str) -> dict:
    def number(pattern: str) -> float:
        match = re.search(pattern, log, re.M)
        if not match:
            sys.exit(f"no match for {pattern!r} in llama-perplexity's output:\n{log[-3000:]}")
        return float(match.group(1))

    return {
        "kld": number(r"^Mean\s+KLD:\s+(-?[\d.]+)"),
        "kld_p99": number(r"^99\.0%\s+KLD:\s+(-?[\d.]+)"),
        "ppl": number(r"^Mean\s+PPL\(Q\)\s+:\s+([\d.]+)"),
        "ppl_ratio": number(r"^Mean\s+PPL\(Q\)/PPL\(base\)\s+:\s+([\d.]+)"),
        "same_top": number(r"^Same top p:\s+([\d.]+)") / 100.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", required=True, help="folder with llama-perplexity")
    parser.add_argument("--model", required=True)
    parser.add_argument("--configs", required=True, help="comma-separated K/V pairs, e.g. q8_0/turbo3")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--label", default="", help="added to each record (e.g. the scale variant)")
    args = parser.parse_args()

    configs = [tuple(c.split("/")) for c in args.configs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "licenses.txt"
        text.write_text(default_text(), encoding="utf-8")
        base = Path(tmp) / "f16.kld"
        perplexity(args, text, "f16", "f16", "--kl-divergence-base", str(base))
        for type_k, type_v in tqdm(configs, desc="K/V configs", file=sys.stderr):
            log = perplexity(args, text, type_k, type_v, "--kl-divergence-base", str(base), "--kl-divergence")
            record = {"type_k": type_k, "type_v": type_v,
                      "bpv_k": cache_type(type_k).bits_per_value, "bpv_v": cache_type(type_v).bits_per_value,
                      **parse_kld_report(log)}
            if args.label:
                record["label"] = args.label
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
