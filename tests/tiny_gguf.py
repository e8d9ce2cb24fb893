"""Writes tiny random llama-architecture GGUF models with the gguf package, for fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
WORD_TOKENS = ["▁the", "▁cat", "▁sat", "▁on", "▁mat", "▁dog"] + [f"▁{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


def write_tiny_llama(path: Path, n_embd: int = 128, n_head: int = 2, n_head_kv: int = 1,
                     n_layer: int = 2, n_ff: int = 256, n_ctx_train: int = 2048, seed: int = 0,
                     chat_template: "str | None" = None, arch: str = "llama", bias: float = 0.0,
                     qk_gain: float = 1.0, n_vocab_extra: int = 0) -> Path:
    """A llama model with random weights and an SPM vocabulary with byte fallback.

    The default head size is 64 (n_embd / n_head) so that llama.cpp's KV rotation
    and every cache type's block size apply. arch="qwen2" with bias > 0 gives Q/K/V
    projection biases the way Qwen2 has them: K's with outliers of size `bias` in the
    lowest-frequency RoPE channels (see qwen2_biases).
    qk_gain scales W_q and W_k: larger scores, sharper attention, more sensitive to K errors.
    n_vocab_extra adds that many unused tokens: a large vocabulary makes the logits, not the
    KV cache, the largest part of the memory a context needs.
    arch="qwen3" adds Qwen3's per-head Q/K RMS norms (gains around 1, a few channels 8x);
    arch="gemma3" those and Gemma 3's post-attention/post-FFN norms, with a sliding window
    of 64 tokens on every layer but each sixth (llama.cpp's Gemma 3 pattern).
    """
    rng = np.random.default_rng(seed)
    head_size = n_embd // n_head
    extra = [f"<unused{i}>" for i in range(n_vocab_extra)]
    tokens = SPECIAL_TOKENS + [f"<0x{b:02X}>" for b in range(256)] + WORD_TOKENS + extra
    types = ([TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
             + [TokenType.NORMAL] * len(WORD_TOKENS) + [TokenType.UNUSED] * len(extra))
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(WORD_TOKENS))] + [-1e4] * len(extra)
    n_vocab = len(tokens)

    writer = GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-test-{arch}")
    add_hyperparameters(writer, n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv, head_size)
    writer.add_layer_norm_rms_eps(1e-5)
    if arch == "gemma3":
        writer.add_sliding_window(64)
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

    for name, shape in llama_tensor_shapes(n_vocab, n_embd, n_layer, n_head * head_size, n_head_kv * head_size,
                                           n_ff):
        # norms start at 1, matrices at unit-variance outputs
        values = np.ones(shape, dtype=np.float32) if len(shape) == 1 else weight(*shape)
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            values *= qk_gain
        writer.add_tensor(name, values)
    if bias:
        for name, values in qwen2_biases(rng, n_layer, n_head, n_head_kv, head_size, bias):
            writer.add_tensor(name, values)
    if arch in ("qwen3", "gemma3"):
        for i in range(n_layer):
            for name in ("attn_q_norm", "attn_k_norm"):
                gains = (1.0 + 0.1 * rng.standard_normal(head_size)).astype(np.float32)
                gains[rng.choice(head_size, 3, replace=False)] *= 8.0
                writer.add_tensor(f"blk.{i}.{name}.weight", gains)
    if arch == "gemma3":
        for i in range(n_layer):
            for name in ("post_attention_norm", "post_ffw_norm"):
                writer.add_tensor(f"blk.{i}.{name}.weight", np.ones(n_embd, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def qwen2_biases(rng, n_layer: int, n_head: int, n_head_kv: int, head: int, scale: float) -> list:
    """(name, values) of Qwen2-style q/k/v projection biases: K's are small but for outliers of
    size `scale` in the two slowest-turning RoPE pairs (NEOX pairs d with d + head/2; the last
    channels of each half turn slowest), where RoPE(b) stays close to b, as in Qwen2.5."""
    slow = [head // 2 - 2, head // 2 - 1, head - 2, head - 1]
    biases = []
    for il in range(n_layer):
        k = rng.standard_normal((n_head_kv, head)) * 0.5
        k[:, slow] = scale * np.sign(rng.standard_normal((n_head_kv, len(slow))))
        biases += [(f"blk.{il}.attn_q.bias", (rng.standard_normal(n_head * head) * 0.1).astype(np.float32)),
                   (f"blk.{il}.attn_k.bias", k.reshape(-1).astype(np.float32)),
                   (f"blk.{il}.attn_v.bias", (rng.standard_normal(n_head_kv * head) * 0.5).astype(np.float32))]
    return biases


def add_hyperparameters(writer: GGUFWriter, n_ctx_train: int, n_embd: int, n_layer: int, n_ff: int, n_head,
                        n_head_kv, head: int) -> None:
    """The llama hyperparameters llama.cpp and pyturbo.upstream.geometry read (head counts may be per-layer lists)."""
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head)


def llama_tensor_shapes(n_vocab: int, n_embd: int, n_layer: int, q_rows: int, kv_rows: int, n_ff: int) -> list:
    """(name, numpy shape) of every tensor of a llama model; the norms are 1-D."""
    shapes = [("token_embd.weight", (n_vocab, n_embd)), ("output_norm.weight", (n_embd,)),
              ("output.weight", (n_vocab, n_embd))]
    for i in range(n_layer):
        shapes += [(f"blk.{i}.attn_norm.weight", (n_embd,)), (f"blk.{i}.attn_q.weight", (q_rows, n_embd)),
                   (f"blk.{i}.attn_k.weight", (kv_rows, n_embd)), (f"blk.{i}.attn_v.weight", (kv_rows, n_embd)),
                   (f"blk.{i}.attn_output.weight", (n_embd, q_rows)), (f"blk.{i}.ffn_norm.weight", (n_embd,)),
                   (f"blk.{i}.ffn_gate.weight", (n_ff, n_embd)), (f"blk.{i}.ffn_up.weight", (n_ff, n_embd)),
                   (f"blk.{i}.ffn_down.weight", (n_embd, n_ff))]
    return shapes


def write_header_only(path: Path, arch: str = "llama", n_layer: int = 4, n_embd: int = 512, n_head=8,
                      n_head_kv=2, head: int = 64, n_ff: int = 1024, n_vocab: int = 1000, n_ctx_train: int = 8192,
                      extra: "dict | None" = None, tensors: bool = True) -> Path:
    """A GGUF with a llama-shaped model's metadata and f16 tensor infos but no tensor data (a few KB):
    what memory planning reads. n_head / n_head_kv may be per-layer lists; extra adds
    `<arch>.<key>` metadata (a list becomes an array)."""
    writer = GGUFWriter(str(path), arch)
    add_hyperparameters(writer, n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv, head)
    writer.add_key_length(head)
    writer.add_value_length(head)
    writer.add_vocab_size(n_vocab)
    for key, value in (extra or {}).items():
        if isinstance(value, list):
            writer.add_array(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", value)
    if tensors:
        q_rows = head * (max(n_head) if isinstance(n_head, list) else n_head)
        kv_rows = head * (max(n_head_kv) if isinstance(n_head_kv, list) else n_head_kv)
        for name, shape in llama_tensor_shapes(n_vocab, n_embd, n_layer, q_rows, kv_rows, n_ff):
            writer.add_tensor_info(name, shape, np.dtype(np.float16), 2 * int(np.prod(shape)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path
