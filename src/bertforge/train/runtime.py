"""Where a run executes: the device (through `torch.accelerator`, so CUDA, ROCm, XPU, MPS and
out-of-tree backends such as HPU take the same path), the process group (torch.distributed,
launched by torchrun, or by mpirun as Habana's recipes and Kubeflow's MPIJob launch: see
`bertforge.train.launch`), and the numeric precision (autocast + fp32 master weights)."""

from __future__ import annotations

import contextlib
import logging
import random

import numpy as np
import torch
import torch.distributed as dist

from bertforge.errors import DeviceError
from bertforge.runconfig import RuntimeArgs, streams_of
from bertforge.train.launch import DistInfo

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.accelerator.is_available():
        kind = torch.accelerator.current_accelerator().type
        devices += [f"{kind}:{i}" for i in range(torch.accelerator.device_count())]
    return devices


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """`auto` -> the accelerator (this rank's one under torchrun) or the CPU; anything else is
    checked against what this machine has, with an error listing what it does have."""
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if spec == "auto":
        if accelerator is None:
            return torch.device("cpu")
        return torch.device(accelerator.type, local_rank % torch.accelerator.device_count())
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"--device {spec!r} is not a device name; available here: "
                          f"{', '.join(available_devices())}") from None
    if device.type == "cpu":
        return device
    if accelerator is None or accelerator.type != device.type:
        raise DeviceError(f"--device {spec}: no {device.type} device on this machine; available here: "
                          f"{', '.join(available_devices())}")
    count = torch.accelerator.device_count()
    index = device.index if device.index is not None else local_rank % count
    if index >= count:
        raise DeviceError(f"--device {spec}: this machine has {count} {device.type} device(s); "
                          f"available here: {', '.join(available_devices())}")
    return torch.device(device.type, index)


class Runtime:
    """Device, process group and precision of one process."""

    def __init__(self, args: RuntimeArgs, dist_info: DistInfo = DistInfo()):
        self.dist = dist_info
        self.device = resolve_device(args.device, dist_info.local_rank)
        self.precision = args.precision
        if self.precision == "fp16" and self.device.type == "mps":
            log.warning("fp16 loss scaling on MPS depends on your torch build")
        if self.precision == "fp16" and self.device.type == "cpu":
            # CPUs have no fast fp16 matmuls: autocast casts back and forth around fp32 kernels.
            log.warning("--precision fp16 (--fp16/--amp) on a CPU runs several times slower than fp32; use "
                        "--precision bf16 (fast on CPUs with AMX/AVX512-BF16) or fp32")
        self.autocast_dtype = AUTOCAST_DTYPES.get(self.precision)
        self.compile = args.compile if args.compile is not None else self.device.type == "cuda"
        self.num_workers = args.num_workers
        self.recompute_attention = args.recompute_attention
        self.streams = streams_of(args)  # CPU inference
        self._set_matmul_precision()
        if dist_info.enabled and not dist.is_initialized():
            if self.device.type != "cpu":
                torch.accelerator.set_device_index(self.device.index)
            backend = dist.get_default_backend_for_device(self.device)
            dist.init_process_group(backend=backend, init_method=dist_info.init_method, rank=dist_info.rank,
                                    world_size=dist_info.world_size)

    def _set_matmul_precision(self) -> None:
        # fp32 means fp32: TF32 only when asked for ("tf32"); bf16/fp16 autocast leaves fp32
        # matmuls (outside autocast) exact too.
        torch.backends.cuda.matmul.allow_tf32 = self.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = self.precision == "tf32"
        torch.set_float32_matmul_precision("high" if self.precision == "tf32" else "highest")

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Dynamic loss scaling, enabled for fp16 only (bf16 has fp32's exponent range); disabled,
        it passes the loss and the optimizer step through unchanged."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.dist.enabled:
            values = values.to(self.device)
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def synchronize(self) -> None:
        if self.device.type != "cpu":
            torch.accelerator.synchronize(self.device)

    def close(self, finished: bool = True) -> None:
        """Take the process group down. After a run that `finished` on this rank, first wait for
        every rank to get here: a rank that tears the group down while rank 0 still writes its
        results was seen to abort in the gloo backend ("terminate called without an active
        exception") on a loaded machine."""
        if self.dist.enabled and dist.is_initialized():
            if finished:
                self.barrier()
            dist.destroy_process_group()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # The process group goes down on errors too (without waiting for the others), so
        # torchrun's other ranks are not left waiting.
        self.close(finished=exc_type is None)


def seed_everything(seed: int) -> None:
    """The same seed on every rank: identical initial weights; data order comes from the
    step sampler, not from these generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
