"""A process's place in a launch (`DistInfo`), as the launcher's environment says: torchrun's
variables, or those of an MPI launcher (mpirun as Habana's recipes run it, Kubeflow's MPIJob).
The CLI reads the environment and passes it here; this module imports no torch, so reading it
costs nothing for commands that never start a process group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from bertforge.errors import DeviceError

# Where each MPI implementation puts a process's rank, world size and rank on its node:
# Open MPI (mpirun, Kubeflow's MPIJob), then MPICH / Intel MPI (PMI, MPI_LOCALRANKID).
MPI_VARIABLES = (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                  "OMPI_COMM_WORLD_LOCAL_SIZE"),
                 ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"))
DEFAULT_MASTER_PORT = 29500  # torchrun's


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a launch: torchrun's (RANK, LOCAL_RANK, WORLD_SIZE; the process
    group meets at MASTER_ADDR:MASTER_PORT, which torch reads) or mpirun's (`from_env`), whose
    meeting point is `master_addr`:`master_port`."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str | None = None  # None: torchrun's environment says it
    master_port: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def init_method(self) -> str:
        return f"tcp://{self.master_addr}:{self.master_port}" if self.master_addr else "env://"

    @classmethod
    def from_env(cls, env: Mapping[str, str], local_rank: int | None = None) -> "DistInfo":
        """This process's place as the launcher's environment `env` says: torchrun's variables,
        else an MPI launcher's (Open MPI, MPICH, Intel MPI) with MASTER_ADDR / MASTER_PORT, which
        default to this host when every rank runs on it. `local_rank`: one that
        torch.distributed.launch put on the command line. A DeviceError, saying how to launch,
        when MPI ranks cannot tell where to meet."""
        mpi = next((names for names in MPI_VARIABLES if names[1] in env), None)
        if "WORLD_SIZE" in env or mpi is None:
            local = _int(env, "LOCAL_RANK", local_rank if local_rank is not None else 0)
            return cls(rank=_int(env, "RANK", 0), local_rank=local, world_size=_int(env, "WORLD_SIZE", 1))
        rank_var, size_var, local_var, local_size_var = mpi
        rank, size = _int(env, rank_var, 0), _int(env, size_var, 1)
        local = _int(env, local_var, rank)
        if size == 1:
            return cls(local_rank=local)
        addr = env.get("MASTER_ADDR")
        if not addr:
            if _int(env, local_size_var, 0) != size:
                raise DeviceError(f"{size} MPI processes on several hosts, but no MASTER_ADDR: export MASTER_ADDR "
                                  f"(rank 0's host) and MASTER_PORT to every rank (mpirun -x MASTER_ADDR -x "
                                  f"MASTER_PORT), or launch with torchrun --nnodes N --nproc_per_node M "
                                  f"--rdzv_endpoint HOST:PORT --no-python bertforge ...")
            addr = "127.0.0.1"  # every rank is on this host
        return cls(rank=rank, local_rank=local, world_size=size, master_addr=addr,
                   master_port=_int(env, "MASTER_PORT", DEFAULT_MASTER_PORT))


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise DeviceError(f"the launcher's {name}={value!r} is not a whole number") from None
