"""Host-device synchronisations, named: a dispatch mode that records every op that makes the
host wait for a device tensor's value.

`torch.cuda.set_sync_debug_mode("error")` says that something synchronised, only on CUDA, and
not which op asked; this records the ops themselves, on any device, and where nothing can be
read at all: on the meta device (tensors with shapes and no data) a training step that runs
through has read nothing back, and the recorder names what it tried to read. Reads of host
(CPU) tensors are free and not recorded: a host batch's counts may be read while the step runs.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten

# Ops whose result is a host value computed from device data, or whose output size depends on
# the data (the host must learn it before allocating).
VALUE_READS = {
    aten._local_scalar_dense.default,  # .item(), float(t), bool(t), int(t)
    aten.equal.default,  # torch.equal returns a Python bool
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
}


class HostSyncRecorder(TorchDispatchMode):
    """Use as a context manager; `syncs` lists the op name of every host wait on a device
    (non-CPU) tensor, in order, also when the op then fails (as any read on the meta device
    does)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _waits_for_device(func, args, kwargs):
            self.syncs.append(str(func))
        return func(*args, **kwargs)


def _on_device(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "cpu"


def _waits_for_device(func, args, kwargs) -> bool:
    if func in VALUE_READS:
        return any(_on_device(t) for t in tree_leaves(args))
    if func is aten._to_copy.default:  # .cpu(), .tolist(), .numpy() of a device tensor
        target = kwargs.get("device")
        return _on_device(args[0]) and target is not None and torch.device(target).type == "cpu"
    if func in (aten.copy_.default, aten.copy.default):  # host_tensor.copy_(device_tensor)
        return not _on_device(args[0]) and _on_device(args[1])
    if func is aten.index.Tensor:  # t[mask]: a boolean mask's true count sizes the output
        return any(_on_device(i) and i.dtype == torch.bool for i in args[1] if i is not None)
    if func is aten.repeat_interleave.Tensor:  # without output_size the total is read back
        return _on_device(args[0]) and kwargs.get("output_size") is None
    return False


__all__ = ["HostSyncRecorder", "VALUE_READS"]
