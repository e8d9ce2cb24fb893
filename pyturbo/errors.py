"""Exceptions pyturbo raises. Every one is a PyturboError with a message a user can act on."""


class PyturboError(Exception):
    """Base class of every error pyturbo raises on purpose."""


class LibraryError(PyturboError, OSError):
    """The native library could not be found or loaded."""


class ModelNotFoundError(PyturboError, FileNotFoundError):
    """The model path does not exist."""


class InvalidModelError(PyturboError, ValueError):
    """The file is not a usable GGUF model (wrong format, truncated, corrupt, unsupported)."""


class CacheTypeError(PyturboError, ValueError):
    """A K/V cache type is unknown or cannot be used with this model or these settings."""


class ContextError(PyturboError, RuntimeError):
    """llama.cpp could not create or run a context."""


class ContextOverflowError(ContextError):
    """The prompt does not fit in the context."""


class ContextBusyError(ContextError):
    """A Context was used from a second thread while a call in another was running."""


class StateError(PyturboError, ValueError):
    """A saved context state is damaged or belongs to another model, cache or context size."""


class PyturboWarning(UserWarning):
    """A setting that works but is probably not what was meant (e.g. n_ctx beyond training)."""


class DownloadError(PyturboError, RuntimeError):
    """A file pyturbo fetches (the default model) could not be fetched or verified."""


class WeightTypeError(PyturboError, ValueError):
    """A weight type name llama-quantize does not accept (or a KV-cache-only type)."""


class QuantizeError(PyturboError, RuntimeError):
    """A quantization was refused (requantizing, existing output) or llama.cpp failed."""


class DeviceError(PyturboError, ValueError):
    """A device name this build of pyturbo does not see (or the CPU where an accelerator is meant)."""


class RPCError(PyturboError, ConnectionError):
    """An RPC worker is unreachable, misnamed or gone, or a worker cannot serve."""


class BackendError(ContextError):
    """llama.cpp's backend gave up in the middle of a call (ggml aborted: a lost RPC worker,
    a failed assertion). The model and its contexts are unusable; pyturbo leaves them unfreed."""


class CheckpointError(PyturboError, ValueError):
    """A folder that is not a Hugging Face checkpoint the pinned converter takes (no config.json, an
    architecture it does not know, no weights, no tokenizer)."""


class ConvertError(PyturboError, RuntimeError):
    """A conversion was refused (existing output, too little disk, the convert extra missing) or
    llama.cpp's converter failed."""
