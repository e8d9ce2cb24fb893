"""Writes tiny random llama-architecture GGUF models with the gguf package, for fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
WORD_TOKENS = ["▁the", "▁cat", "▁sat", "▁on", "▁mat", "▁dog"] + [f"▁{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


def write_tiny_llama(path: Path, n_embd: int = 128, n_head: int = 2, n_head_kv: int = 1,
                     n_layer: int = 2, n_ff: int = 256, n_ctx_train: int = 2048, seed: int = 0,
                     chat_template: "str | None" = None) -> Path:
    """A llama model with random weights and an SPM vocabulary with byte fallback.

    The default head size is 64 (n_embd / n_head) so that llama.cpp's KV rotation
    and every cache type's block size apply.
    """
    rng = np.random.default_rng(seed)
    head_size = n_embd // n_head
    tokens = SPECIAL_TOKENS + [f"<0x{b:02X}>" for b in range(256)] + WORD_TOKENS
    types = ([TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
             + [TokenType.NORMAL] * len(WORD_TOKENS))
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(WORD_TOKENS))]
    n_vocab = len(tokens)

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_size)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all f32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    if chat_template:
        writer.add_chat_template(chat_template)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", weight(n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(n_head * head_size, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(n_head_kv * head_size, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(n_head_kv * head_size, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(n_embd, n_head * head_size))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
