"""What llama.cpp's model loader asserts rather than reports, checked in Python first.

llama.cpp reports most problems of a model file as a failed load (a NULL model,
an InvalidModelError in pyturbo), but meets some with GGML_ASSERT, which aborts
the whole process: a block count of 0 or above 512, expert counts that disagree,
an unknown RoPE scaling type, two vocabulary entries with the same text; and
some that leave the model loaded but crash its first context (head sizes this
architecture's graph asserts agree, a weight type without CPU kernels). A
half-downloaded or corrupt file must not take the program down with it, so
`check_loader_rules` (run by pyturbo.gguf.check_gguf_file, before pyturbo.Model
and pyturbo.weights.quantize hand a file to llama.cpp) refuses such a file with
an InvalidModelError that names the key and the file.

Each rule cites the assert it stands for (llama.cpp at the pinned commit).
"""

from __future__ import annotations

from gguf import GGMLQuantizationType

from ..errors import InvalidModelError

CHECKED_AT_PIN = "0c1e57098"

# (pyturbo.gguf calls this module, so it takes the GGUFHeader it is given and imports nothing of gguf's.)
UINT32_MAX = 2**32 - 1

# src/llama-hparams.h
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
# llama_rope_scaling_type_from_string (src/llama-model.cpp): any other name is GGML_ASSERTed.
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")

# The architectures whose graph (src/models/<arch>.cpp, llama_model_<arch>::graph) asserts,
# when a context is made, that layer 0's K head size equals its V head size
# (GGML_ASSERT(n_embd_head == hparams.n_embd_head_k()), n_embd_head being the V size) ...
EQUAL_HEAD_SIZE_ARCHS = frozenset((
    "afmoe", "apertus", "arcee", "arctic", "baichuan", "bailingmoe2", "bert", "bitnet", "bloom", "chameleon",
    "chatglm", "codeshell", "cogvlm", "cohere2", "cohere2moe", "command-r", "dbrx", "deci", "deepseek", "dots1",
    "dream", "ernie4_5", "ernie4_5-moe", "eurobert", "exaone", "exaone-moe", "exaone4", "falcon", "glm4",
    "glm4moe", "gpt2", "gptneox", "granite", "granite_swa", "granitehybrid", "graniteswitch", "grok",
    "grovemoe", "hunyuan-moe", "hunyuan_vl", "hy_v3", "internlm2", "jais", "jais2", "laguna", "llada",
    "llada-moe", "llama", "llama4", "maincoder", "maple", "mellum", "minimax-01", "minimax-m2", "minimax-m3",
    "mistral3", "modern-bert", "mpt", "muse-glimmer", "nanbeige", "nemotron", "nemotron_h", "nemotron_h_moe",
    "neo-bert", "olmo", "olmo2", "olmoe", "openelm", "orion", "paddleocr", "pangu-embedded", "phi2", "phi3",
    "plamo", "pockettts", "qwen", "qwen2", "qwen2moe", "qwen2vl", "qwen3", "qwen35", "qwen35moe", "qwen3moe",
    "qwen3next", "qwen3vl", "qwen3vlmoe", "qwen4exp", "refact", "rnd1", "seed_oss", "smallthinker", "smollm3",
    "spark2_5", "stablelm", "starcoder", "starcoder2", "t5", "talkie", "xverse",
))
# ... and of these, which also assert that RoPE turns the whole head (GGML_ASSERT(n_embd_head == n_rot));
# llama itself refuses such a file at load ("invalid n_rot").
WHOLE_HEAD_ROPE_ARCHS = frozenset((
    "apertus", "arcee", "arctic", "baichuan", "chameleon", "codeshell", "cogvlm", "cohere2moe", "dbrx", "deci",
    "deepseek", "dots1", "dream", "ernie4_5", "ernie4_5-moe", "exaone", "exaone-moe", "exaone4", "falcon",
    "granite", "granite_swa", "graniteswitch", "grok", "grovemoe", "hunyuan-moe", "hunyuan_vl", "hy_v3",
    "internlm2", "jais2", "llada", "llada-moe", "llama", "llama4", "maincoder", "mellum", "minimax-01",
    "minimax-m2", "mistral3", "nemotron", "olmo", "olmo2", "olmoe", "orion", "paddleocr", "pangu-embedded",
    "plamo", "pockettts", "qwen2", "qwen2moe", "qwen2vl", "qwen3", "qwen3moe", "qwen3vl", "qwen3vlmoe", "rnd1",
    "seed_oss", "smallthinker", "smollm3", "starcoder2", "talkie", "xverse",
))


# ggml types without a CPU matrix kernel (no vec_dot in ggml-cpu.c's type_traits_cpu): Q8_1 and
# Q8_K hold intermediate values, the integer types indices. llama.cpp loads a weight of such a
# type (its support check passes) and the first matrix product crashes (SIGSEGV).
NO_KERNEL_TYPES = {GGMLQuantizationType.Q8_1, GGMLQuantizationType.Q8_K, GGMLQuantizationType.I8,
                   GGMLQuantizationType.I16, GGMLQuantizationType.I32, GGMLQuantizationType.I64,
                   GGMLQuantizationType.F64}


# ggml-backend's TENSOR_ALIGNMENT: llama.cpp maps tensor data in place and asserts each
# buffer starts at a multiple of it.
TENSOR_ALIGNMENT = 32
# llama_kv_cache::set_input_kq_mask reserves 4 bytes per token of the sliding window at every
# decode (8 GiB for a window of 2^31); real windows are a few thousand tokens.
MAX_SLIDING_WINDOW = 1 << 24
# Norm epsilons: ggml's norm kernels assert eps >= 0 (a NaN fails too).
EPSILON_KEYS = ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon")


def check_loader_rules(header) -> None:
    """InvalidModelError if llama.cpp's loader would abort on this pyturbo.gguf.GGUFHeader, else nothing."""
    _check_hparams(header)
    _check_vocabulary(header)
    _check_tensors(header)


def _check_tensors(header) -> None:
    """Tensor types ggml's CPU kernels cannot compute with, and data llama.cpp cannot map."""
    for tensor in header.tensors:
        if tensor.name.endswith((".weight", ".bias")):
            if tensor.type_id in NO_KERNEL_TYPES:
                raise InvalidModelError(f"{tensor.name} is stored as {tensor.type_name}, a type llama.cpp has no "
                                        f"kernels to compute with: {header.path}")
            if len(tensor.shape) == 1 and tensor.type_id != GGMLQuantizationType.F32:
                # Norm gains and biases meet F32 activations in ggml's element-wise ops, which
                # abort on any other type (binary_op: "unsupported types").
                raise InvalidModelError(f"{tensor.name} is a vector stored as {tensor.type_name}; llama.cpp "
                                        f"multiplies and adds vectors only as F32: {header.path}")
        start = header.data_offset + tensor.offset
        if start % TENSOR_ALIGNMENT:
            raise InvalidModelError(f"{tensor.name}'s data starts at byte {start}, not a multiple of "
                                    f"{TENSOR_ALIGNMENT} (general.alignment is too small for llama.cpp): "
                                    f"{header.path}")


def _check_hparams(header) -> None:
    """llama_model_base::load_hparams's asserts on what every architecture reads."""
    # A missing block_count is an error llama.cpp reports; a wrong one it asserts on.
    n_layer = header.get_int("block_count", None, minimum=1, maximum=LLAMA_MAX_LAYERS)
    if n_layer is None:
        return
    header.get_int("nextn_predict_layers", 0, maximum=n_layer)
    n_expert = header.get_int("expert_count", 0, maximum=LLAMA_MAX_EXPERTS)
    n_expert_used = max(header.get_per_layer("expert_used_count", n_layer, maximum=UINT32_MAX))
    n_groups = header.get_int("expert_group_count", 0)
    n_group_used = header.get_int("expert_group_used_count", 0)
    if n_expert_used > n_expert:
        raise header.invalid("expert_used_count", n_expert_used, f"at most expert_count ({n_expert})")
    if n_expert > 0:
        if n_expert_used == 0:
            raise header.invalid("expert_used_count", 0, f"at least 1 with {n_expert} experts")
        if n_groups >= n_expert:
            raise header.invalid("expert_group_count", n_groups, f"fewer than expert_count ({n_expert})")
        if n_groups > 1 and (n_expert % n_groups or not 0 < n_group_used < n_groups):
            raise header.invalid("expert_group_count", n_groups,
                                 f"a divisor of expert_count ({n_expert}), with 0 < expert_group_used_count "
                                 f"({n_group_used}) < it")
    elif n_groups:
        raise header.invalid("expert_group_count", n_groups, "0 without experts")
    scaling = header.get("rope.scaling.type")
    if isinstance(scaling, str) and scaling not in ROPE_SCALING_TYPES:
        raise header.invalid("rope.scaling.type", scaling, f"one of {', '.join(ROPE_SCALING_TYPES)}")
    header.get_int("attention.sliding_window", 0, maximum=MAX_SLIDING_WINDOW)
    _check_head_sizes(header, n_layer)
    _check_rope_and_norms(header, n_layer)


def _check_rope_and_norms(header, n_layer: int) -> None:
    """ggml's RoPE kernel asserts it turns an even number of channels, no more than the head
    has; its norm kernels assert a non-negative epsilon. Both only when the model first runs."""
    n_rot = header.get_int("rope.dimension_count")
    if n_rot is not None:
        n_head = header.get_per_layer("attention.head_count", n_layer)[0]
        n_embd = header.get_int("embedding_length", 0)
        head_k = header.get_int("attention.key_length", n_embd // n_head if n_head else n_rot)
        if n_rot % 2 or n_rot > head_k:
            raise header.invalid("rope.dimension_count", n_rot, f"an even number of channels, at most the head "
                                                                f"size ({head_k})")
    for key in EPSILON_KEYS:
        eps = header.get(key)
        if isinstance(eps, (int, float)) and not eps >= 0:
            raise header.invalid(key, eps, "a number >= 0")


def _check_head_sizes(header, n_layer: int) -> None:
    """The graph asserts of EQUAL_HEAD_SIZE_ARCHS and WHOLE_HEAD_ROPE_ARCHS, on layer 0's sizes as
    load_hparams derives them: K and V heads n_embd / n_head unless stated, RoPE the whole K head."""
    arch = header.architecture
    if arch not in EQUAL_HEAD_SIZE_ARCHS or header.get("attention.key_length_mla") is not None:
        return
    n_head = header.get_per_layer("attention.head_count", n_layer)[0]
    n_embd = header.get_int("embedding_length", 0)
    if n_head == 0:
        return
    head_k = header.get_int("attention.key_length", n_embd // n_head)
    head_v = header.get_int("attention.value_length", n_embd // n_head)
    if head_k != head_v:
        raise header.invalid("attention.value_length", head_v,
                             f"the K head size ({head_k}): llama.cpp's {arch} graph asserts they agree")
    n_rot = header.get_int("rope.dimension_count", head_k)
    if arch in WHOLE_HEAD_ROPE_ARCHS and n_rot != head_k:
        raise header.invalid("rope.dimension_count", n_rot,
                             f"the head size ({head_k}): llama.cpp's {arch} graph asserts RoPE turns the whole head")


def _check_vocabulary(header) -> None:
    """llama_vocab::impl::load asserts that no two tokens have the same text (an empty one
    stands as "[EMPTY_<id>]"); an SPM tokenizer with byte fallback throws, through llama_tokenize,
    which terminates the process, on a byte whose <0xXX> token is missing."""
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return  # not an array of strings: llama.cpp reports that itself
    unique = set(tokens)
    if not all(tokens) or len(unique) < len(tokens):
        seen = {}
        for i, token in enumerate(tokens):
            text = token if token else f"[EMPTY_{i}]"
            if text in seen:
                raise InvalidModelError(f"tokenizer.ggml.tokens has {text[:60]!r} twice (ids {seen[text]} and "
                                        f"{i}): {header.path}")
            seen[text] = i
    if header.metadata.get("tokenizer.ggml.model") == "llama":
        _check_byte_fallback(header, unique)


def _check_byte_fallback(header, tokens: set) -> None:
    """llama_vocab::byte_to_token (SPM): a byte that forms no token becomes <0xXX>, else the
    byte itself as a token, else std::out_of_range. A vocabulary with byte tokens has all 256
    (one without any is a model without byte fallback, as trained)."""
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    if tokens.isdisjoint(byte_tokens):
        return
    missing = [name for byte, name in enumerate(byte_tokens)
               if name not in tokens and not (0 < byte < 0x80 and chr(byte) in tokens)]
    if missing:
        raise InvalidModelError(f"tokenizer.ggml.tokens lacks the byte token{'s' * (len(missing) > 1)} "
                                f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''} of its "
                                f"byte fallback: {header.path}")
