"""Model: a loaded GGUF model, owning its llama_model handle."""

from __future__ import annotations

import contextlib
import functools
import os
import weakref
from pathlib import Path
from typing import Iterator, Sequence

from . import _native
from ._native import ffi, llama
from .assets import default_model
from .context import Context
from .devices import device_handles, offload_devices
from .devices import devices as all_devices
from .errors import InvalidModelError, PyturboError
from .gguf import check_gguf_file, read_gguf_header
from .rpc import WorkerHealth, connect_workers, parse_endpoints
from .state import model_fingerprint
from .upstream.geometry import ModelGeometry, model_geometry
from .weights import select_quant


class Model(_native.NativeObject):
    """A GGUF model loaded by llama.cpp.

    >>> model = pyturbo.Model()                  # the default model (SmolLM2-135M)
    >>> ctx = model.context(n_ctx=4096, cache_k="q8_0", cache_v="turbo3")
    >>> pyturbo.Model("models/", quant="q4_K_M")  # the Q4_K_M file of a folder of quants

    n_gpu_layers: layers to offload (llama.cpp's -ngl; -1 all); default 0, or all with rpc.
    devices: the accelerators to offload n_gpu_layers to, by name ("CUDA0", "MTL0";
    pyturbo.devices.devices() lists them); all of this machine's and rpc's when None.
    rpc: RPC workers ("host:port", a list or comma-separated; pyturbo.rpc) whose devices
    take layers and their KV caches, split as llama.cpp splits over GPUs.
    tensor_split: the share of the offloaded layers per device, in device order (e.g. [1, 3]);
    default by free memory.
    quant: a weight type (any llama-quantize name, any case). The path may then
    also be a folder or a glob pattern of several quants of one model; a 16/32-bit
    file is quantized once into the cache dir (see pyturbo.weights.select_quant).
    """

    def __init__(self, path: "str | os.PathLike | None" = None, n_gpu_layers: "int | None" = None,
                 *, use_mmap: bool = True, vocab_only: bool = False, quant: "str | None" = None,
                 devices: "Sequence[str] | None" = None, rpc: "str | Sequence[str] | None" = None,
                 tensor_split: "Sequence[float] | None" = None) -> None:
        self.path = Path(path) if path is not None else default_model()
        self.rpc = parse_endpoints(rpc)
        self.n_gpu_layers = n_gpu_layers if n_gpu_layers is not None else (-1 if self.rpc else 0)
        if quant is not None:
            self.path = select_quant(self.path, quant)
        # Fail early, in Python, on the file problems llama.cpp reports only as a NULL model.
        check_gguf_file(self.path)
        params = llama.llama_model_default_params()
        params.n_gpu_layers = self.n_gpu_layers
        connect_workers(self.rpc)
        self.devices = list(devices) if devices is not None else None
        if devices is not None or any(d.endpoint for d in all_devices()):
            # Named, so that RPC workers another model of this process registered take no layers of this one.
            workers = [d.name for d in offload_devices(self.rpc) if d.endpoint]
            self.devices = (self.devices + [d for d in workers if d not in self.devices] if devices is not None
                            else [d.name for d in offload_devices(self.rpc)])
            # llama.cpp reads these arrays during the load only; keep them alive until then
            device_list = device_handles(self.devices)
            params.devices = device_list
        if tensor_split is not None:
            split = tensor_split_array(tensor_split, len(self.devices if self.devices is not None
                                                         else offload_devices()))
            params.tensor_split = split
        params.vocab_only = vocab_only
        if not use_mmap:
            params.load_mode = llama.LLAMA_LOAD_MODE_NONE
        with _native.captured_log() as log:
            handle = llama.llama_model_load_from_file(os.fsencode(self.path), params)
        if handle == ffi.NULL:
            reason = _native.last_problem(log) or "llama.cpp gave no reason"
            raise InvalidModelError(f"could not load model {self.path}: {reason}")
        self._own(handle, llama.llama_model_free, WorkerHealth(self.rpc))
        self._vocab = llama.llama_model_get_vocab(handle)
        self._contexts: weakref.WeakSet = weakref.WeakSet()

    def close(self) -> None:
        """Free the model (and any context still open on it). Safe to call twice; with an
        RPC worker gone, nothing is freed (pyturbo.rpc.WorkerHealth.free)."""
        for ctx in list(self._contexts):
            ctx.close()
        super().close()

    # The RPC workers' health is self.health (pyturbo.rpc.WorkerHealth), shared with every
    # context; these are its answers, for this model.

    def gone_workers(self) -> list[str]:
        """This model's RPC workers that are gone (pyturbo.rpc.worker_answers)."""
        return self.health.gone()

    def safe_free(self, free):
        """free, as a function of the handle, for this model or one of its contexts (WorkerHealth.free)."""
        return functools.partial(self.health.free, free)

    def check_workers(self, what: str) -> None:
        """BackendError, and this model abandoned, if one of its RPC workers is gone (WorkerHealth.check_workers)."""
        self.health.check_workers(what)

    def backend_failed(self, what: str) -> str:
        """Abandon this model and its contexts after ggml gave up (WorkerHealth.backend_failed); the reason."""
        return self.health.backend_failed(what)

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.description
        return f"<pyturbo.Model {self.path.name} ({state})>"

    def metadata(self, key: str) -> "str | None":
        """A GGUF metadata value as llama.cpp renders it, or None."""
        size = 256
        while True:
            buf = ffi.new("char[]", size)
            n = llama.llama_model_meta_val_str(self.handle, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return ffi.string(buf).decode("utf-8", "replace")
            size = n + 1

    @property
    def architecture(self) -> str:
        return self.metadata("general.architecture") or "unknown"

    @property
    def description(self) -> str:
        buf = ffi.new("char[]", 256)
        llama.llama_model_desc(self.handle, buf, 256)
        return ffi.string(buf).decode("utf-8", "replace")

    @property
    def n_layer(self) -> int:
        return llama.llama_model_n_layer(self.handle)

    @property
    def n_head(self) -> int:
        return llama.llama_model_n_head(self.handle)

    @property
    def n_head_kv(self) -> int:
        return llama.llama_model_n_head_kv(self.handle)

    @property
    def n_embd(self) -> int:
        return llama.llama_model_n_embd(self.handle)

    @property
    def n_vocab(self) -> int:
        return llama.llama_vocab_n_tokens(self.vocab)

    @property
    def n_ctx_train(self) -> int:
        return llama.llama_model_n_ctx_train(self.handle)

    @property
    def n_params(self) -> int:
        return llama.llama_model_n_params(self.handle)

    @property
    def size_bytes(self) -> int:
        return llama.llama_model_size(self.handle)

    @functools.cached_property
    def geometry(self) -> ModelGeometry:
        """Per-layer heads, head sizes, sliding window, ... as llama.cpp reads them (from the GGUF header)."""
        return model_geometry(read_gguf_header(self.path))

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the file's header and of the start of each tensor's data: what a
        saved context state (Context.save_state) is tied to."""
        return model_fingerprint(self.path)

    @property
    def head_size_k(self) -> int:
        """Size of one K head (GGUF `attention.key_length`, else n_embd / n_head)."""
        return self.geometry.head_size_k

    @property
    def head_size_v(self) -> int:
        """Size of one V head (GGUF `attention.value_length`, else n_embd / n_head)."""
        return self.geometry.head_size_v

    @property
    def chat_template(self) -> "str | None":
        template = llama.llama_model_chat_template(self.handle, ffi.NULL)
        return None if template == ffi.NULL else ffi.string(template).decode("utf-8", "replace")

    @property
    def vocab(self):
        self.handle  # raises when closed
        return self._vocab

    @property
    def bos(self) -> int:
        return llama.llama_vocab_bos(self.vocab)

    @property
    def add_bos(self) -> bool:
        """Whether tokenizing with add_special=True puts BOS first."""
        return bool(llama.llama_vocab_get_add_bos(self.vocab))

    # -- text <-> tokens (the vocabulary's work; any thread may call these) -------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buf = ffi.new("llama_token[]", capacity)
            n = llama.llama_tokenize(self.vocab, data, len(data), buf, capacity,
                                     add_special, parse_special)
            if n >= 0:
                return list(buf[0:n])
            capacity = -n

    def detokenize(self, tokens: Sequence[int], remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        ids = ffi.new("llama_token[]", list(tokens))
        capacity = len(tokens) * 16 + 16
        while True:
            buf = ffi.new("char[]", capacity)
            n = llama.llama_detokenize(self.vocab, ids, len(tokens), buf, capacity,
                                       remove_special, unparse_special)
            if n >= 0:
                return ffi.unpack(buf, n).decode("utf-8", "replace")
            capacity = -n

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (may be part of a UTF-8 character)."""
        capacity = 64
        while True:
            buf = ffi.new("char[]", capacity)
            n = llama.llama_token_to_piece(self.vocab, token, buf, capacity, 0, False)
            if n >= 0:
                return ffi.unpack(buf, n)
            capacity = -n

    def format_chat(self, messages: Sequence[dict], add_assistant: bool = True) -> str:
        """Render messages ([{"role": ..., "content": ...}]) with the model's chat template."""
        template = self.chat_template
        keep_alive = []
        chat = ffi.new("llama_chat_message[]", len(messages))
        for i, message in enumerate(messages):
            role = ffi.new("char[]", str(message["role"]).encode())
            content = ffi.new("char[]", str(message["content"]).encode())
            keep_alive += [role, content]
            chat[i].role, chat[i].content = role, content
        tmpl = ffi.new("char[]", template.encode()) if template else ffi.NULL
        capacity = 2 * sum(len(str(m["content"])) for m in messages) + 256
        while True:
            buf = ffi.new("char[]", capacity)
            n = llama.llama_chat_apply_template(tmpl, chat, len(messages), add_assistant, buf, capacity)
            if n < 0:
                raise PyturboError("llama.cpp does not support this model's chat template")
            if n <= capacity:
                return ffi.unpack(buf, n).decode("utf-8", "replace")
            capacity = n

    def context(self, n_ctx: int = 4096, cache_k: str = "f16", cache_v: str = "f16",
                flash_attn: "str | bool" = "auto", n_threads: "int | None" = None, seed: int = 0,
                kv_transform: "str | int" = "auto", **kwargs) -> Context:
        """Create an inference context; see `pyturbo.Context` for the parameters."""
        ctx = Context(self, n_ctx=n_ctx, cache_k=cache_k, cache_v=cache_v, flash_attn=flash_attn,
                      n_threads=n_threads, seed=seed, kv_transform=kv_transform, **kwargs)
        self._contexts.add(ctx)
        return ctx


def tensor_split_array(shares: "Sequence[float]", n_devices: int):
    """llama_model_params.tensor_split: one non-negative share per device, padded to llama_max_devices()."""
    shares = [float(x) for x in shares]
    if len(shares) > n_devices or any(not x >= 0 for x in shares) or not any(shares):
        raise PyturboError(f"tensor_split {shares}: give at most one non-negative share per offload device "
                           f"({n_devices} here), not all zero")
    size = int(llama.llama_max_devices())
    return ffi.new("float[]", shares + [0.0] * (size - len(shares)))


@contextlib.contextmanager
def open_model(model: "Model | str | os.PathLike", **kwargs) -> Iterator[Model]:
    """`with open_model(model) as m:` a Model as it is, or one loaded from a path (with
    kwargs) and closed when the block ends."""
    if isinstance(model, Model):
        yield model
        return
    with Model(model, **kwargs) as loaded:
        yield loaded
