"""A tiny random Hugging Face checkpoint, made with transformers: what a model page downloads, in small.

    python tests/tiny_checkpoint.py OUT_DIR [--arch llama|qwen2] [--hidden 256] [--layers 2]

writes config.json, model.safetensors (float16), a SentencePiece tokenizer trained on
a little English (tokenizer.model) and its tokenizer_config.json. Head size 64 (the
turbo cache types need the Hadamard rotation, which needs it), GQA, rows of 256
values so that the k-quants apply. Needs the `convert` extra (torch, transformers,
sentencepiece). tests/test_convert_checkpoint.py uses it; README's "From a Hugging Face
checkpoint" runs its commands on it.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
from pathlib import Path

ARCHITECTURES = ("llama", "qwen2")
VOCAB_SIZE = 512
HEAD_SIZE = 64
# Weights drawn wider than transformers' default (0.02), so that a random model's next-token
# distribution has a clear top token and greedy decoding is a fair comparison.
INITIALIZER_RANGE = 0.06
LICENSE_TEXTS = "/usr/share/common-licenses/*"
FALLBACK_TEXT = ("The quick brown fox jumps over the lazy dog. A model page holds a config, weights and a "
                 "tokenizer. Long contexts on small machines need a small cache. ") * 40


def training_sentences() -> list:
    """English lines to train the tokenizer on: the Debian license texts where they exist."""
    lines = []
    for path in sorted(glob.glob(LICENSE_TEXTS))[:6]:
        try:
            lines += Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
    lines = [line.strip() for line in lines if line.strip()]
    return lines if len(lines) > 200 else FALLBACK_TEXT.split(". ")


def write_tokenizer(folder: Path) -> None:
    """A byte-fallback BPE SentencePiece model of VOCAB_SIZE pieces, as Llama's tokenizer.model is,
    and the tokenizer_config.json transformers and the converter read next to it."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(training_sentences()), model_writer=model,
                                   vocab_size=VOCAB_SIZE, model_type="bpe", byte_fallback=True,
                                   character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   num_threads=1, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False, "model_max_length": 2048, "legacy": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))


def model_config(arch: str, hidden: int = 256, layers: int = 2):
    """Heads of 64 values, half as many KV heads, a feed-forward twice the width (what the tests use),
    or 2.75 times it for the larger models of docs/results/convert-tiny.md."""
    import transformers

    heads = hidden // HEAD_SIZE
    feed_forward = 2 * hidden if hidden <= 256 else (hidden * 11 // 4 + 255) // 256 * 256
    shape = dict(vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=feed_forward, num_hidden_layers=layers,
                 num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=2048,
                 rms_norm_eps=1e-5, initializer_range=INITIALIZER_RANGE, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        return transformers.LlamaConfig(**shape, tie_word_embeddings=False)
    if arch == "qwen2":
        return transformers.Qwen2Config(**shape, tie_word_embeddings=True, use_sliding_window=False)
    raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")


def write_tiny_checkpoint(folder: "str | Path", arch: str = "llama", seed: int = 0, hidden: int = 256,
                          layers: int = 2) -> Path:
    """A random `arch` checkpoint in folder (created), its weights stored as float16."""
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = model_config(arch, hidden, layers)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        # transformers starts norms at 1 and biases at 0; random ones check that they are carried over.
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:
                base = 0.0 if name.endswith("bias") else 1.0
                parameter.copy_(base + 0.2 * torch.randn_like(parameter))
    model.to(torch.float16).save_pretrained(folder)
    write_tokenizer(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write the checkpoint to")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="llama")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=256, help="embedding width, a multiple of 64 (default 256)")
    parser.add_argument("--layers", type=int, default=2, help="layers (default 2)")
    args = parser.parse_args()
    print(write_tiny_checkpoint(args.out, args.arch, args.seed, args.hidden, args.layers))


if __name__ == "__main__":
    main()
