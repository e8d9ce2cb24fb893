"""Devices: the CPU and the accelerators (CUDA, Metal, RPC workers) pyturbo's library can use.

Names are llama.cpp's (`llama-cli --list-devices`): "CPU", "CUDA0", "MTL0", and "RPC0",
"RPC1", ... for the devices of RPC workers (their description is the worker's host:port;
pyturbo.rpc). A model's layers go to the accelerators it is given (`Model(path,
n_gpu_layers=99, devices=["CUDA0"])`, all local ones and its own RPC workers' when none
are named); what is not offloaded stays on the CPU.

    python -m pyturbo.selftest --list-devices [--rpc host:port,...]   # lists them
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ._native import ffi, ggml_backend, llama
from .errors import DeviceError

# enum ggml_backend_dev_type, in declaration order (pyturbo/_cdefs.py)
_KINDS = ("cpu", "gpu", "igpu", "accel", "meta")


@dataclass(frozen=True)
class Device:
    name: str          # "CPU", "CUDA0", "MTL0", "RPC[127.0.0.1:50052]"
    description: str   # e.g. the GPU's or the CPU's model name
    kind: str          # "cpu", "gpu", "igpu" (shares host memory), "accel" (BLAS, AMX), "meta"
    memory_free: int   # bytes, as the backend reports them
    memory_total: int

    @property
    def endpoint(self) -> str:
        """The RPC worker's "host:port" for an RPC device, else ""."""
        return self.description if self.name.startswith("RPC") and ":" in self.description else ""

    @property
    def offloads_layers(self) -> bool:
        """Whether model layers (and their KV cache) can be placed on it: GPUs, not the CPU or BLAS."""
        return self.kind in ("gpu", "igpu")


def _kind(dev_type: int) -> str:
    return _KINDS[dev_type] if 0 <= dev_type < len(_KINDS) else "unknown"


def _describe(handle) -> Device:
    free, total = ffi.new("size_t *"), ffi.new("size_t *")
    # guarded: an RPC device asks its worker, and a lost worker would end the process; it reads 0
    llama.pyturbo_guarded_dev_memory(handle, free, total, ffi.NULL, 0)
    return Device(name=ffi.string(ggml_backend.ggml_backend_dev_name(handle)).decode(),
                  description=ffi.string(ggml_backend.ggml_backend_dev_description(handle)).decode(),
                  kind=_kind(int(ggml_backend.ggml_backend_dev_type(handle))),
                  memory_free=free[0], memory_total=total[0])


def devices() -> list[Device]:
    """Every device the loaded library sees, in llama.cpp's order (accelerators first, CPU last)."""
    return [_describe(ggml_backend.ggml_backend_dev_get(i))
            for i in range(ggml_backend.ggml_backend_dev_count())]


def offload_devices(rpc: "Sequence[str]" = ()) -> list[Device]:
    """The devices model layers can be offloaded to: this machine's (none on a CPU-only build)
    and those of the RPC workers named in rpc (registered already: pyturbo.rpc.connect_workers)."""
    return [device for device in devices()
            if device.offloads_layers and (not device.endpoint or device.endpoint in rpc)]


def find_offload_devices(names) -> list[Device]:
    """The named devices, each one that takes model layers.

    Raises DeviceError for an unknown name (listing the known ones) or for a device that
    takes no layers (the CPU: layers that are not offloaded stay there anyway).
    """
    known = {device.name: device for device in devices()}
    found = []
    for name in names:
        device = known.get(name)
        if device is None:
            raise DeviceError(f"no device {name!r} in this build of pyturbo; devices: {', '.join(known) or 'none'}")
        if not device.offloads_layers:
            offload = [d.name for d in known.values() if d.offloads_layers]
            raise DeviceError(f"{name} ({device.kind}) takes no offloaded layers; leave it out "
                              f"(layers not offloaded run on the CPU). Offload devices: {', '.join(offload) or 'none'}")
        found.append(device)
    return found


def device_handles(names) -> "ffi.CData":
    """A NULL-terminated ggml_backend_dev_t array for llama_model_params.devices
    (DeviceError as find_offload_devices)."""
    handles = [ggml_backend.ggml_backend_dev_by_name(device.name.encode()) for device in find_offload_devices(names)]
    return ffi.new("ggml_backend_dev_t[]", handles + [ffi.NULL])

