"""Everything pace knows about running as several processes: torch.distributed, launched by torchrun.

One process is the degenerate case of the same code: ``current_world()`` answers rank 0 of 1, every
reduction is the identity and every rank is the writer. Training asks this module questions ("am
I the writer?", "which rows of this global batch are mine?", "did any rank get a stop signal?")
instead of reading environment variables itself.

Semantics that do not change with the number of processes:
- ``[data] batch_size`` is the global batch; rank r of N takes rows [r·B/N, (r+1)·B/N) of every
  global batch, drawn by one sampler seeded the same on every rank. With ``[train] accumulate``
  = M each share is split again into M micro-batches, each still placed in the global batch.
- Random draws inside the model (PACE noise, drop masks) are drawn for the whole global batch from
  a generator keyed by (seed, step), and each rank keeps its rows (:class:`SampleLayout`), so a
  sample gets the same draw whatever rank and world size process it.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from pace_cli.errors import PaceError

# How long a collective may wait for a peer before failing: a rank that died must not leave the
# others waiting forever. Generous, since a first step can include slow compilation or loading.
DEFAULT_TIMEOUT_S = float(os.environ.get("PACE_DIST_TIMEOUT_S", "600"))

_control_group = None  # a Gloo group for tiny host-side agreements (stop flags), whatever the backend


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes files, logs and draws progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def is_rank_zero() -> bool:
    """Whether this process is (or, before the group is joined, will be) rank 0: the one that prints."""
    return current_world().is_writer if dist.is_available() and dist.is_initialized() else \
        int(os.environ.get("RANK", "0")) == 0


def current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def resolve_device(choice: str, world: World) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` under a multi-GPU launch."""
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise PaceError("[train] device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if choice == "cpu" or not cuda:
        return torch.device("cpu")
    if not world.distributed:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise PaceError(
            f"rank {world.rank} has local rank {world.local_rank} but this machine has {count} CUDA device(s); "
            f"start at most {count} processes per node (torchrun --nproc-per-node {count}) or set [train] device = 'cpu'"
        )
    return torch.device("cuda", world.local_rank)


def init_from_environment(device_choice: str = "auto") -> World:
    """Join the process group torchrun set up (idempotent); a plain process stays a world of one.

    NCCL when this rank trains on CUDA, Gloo on the CPU. A group a caller initialised itself is
    used as it is, unless its backend cannot drive the chosen device.
    """
    global _control_group
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        if dist.is_available() and dist.is_initialized():
            return current_world()
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    device = resolve_device(device_choice, world)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=DEFAULT_TIMEOUT_S),
                                device_id=device if device.type == "cuda" else None)
        atexit.register(shutdown)
    elif dist.get_backend() == "nccl" and device.type != "cuda":
        raise PaceError("the process group uses NCCL but [train] device = 'cpu'; "
                        "set device = 'auto' or 'cuda', or launch without CUDA (Gloo)")
    if _control_group is None:
        _control_group = dist.new_group(backend="gloo")
    return current_world()


def shutdown() -> None:
    global _control_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None


# --- agreement and reductions ---------------------------------------------------------------------


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (a host-side Gloo all-reduce).

    Used once per step for the stop signal: ranks must stop at the same step or the survivors
    would wait in the next gradient all-reduce.
    """
    if not current_world().distributed:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control_group)
    return bool(value.item())


def barrier() -> None:
    if current_world().distributed:
        dist.barrier(group=_control_group)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks in place (no-op in one process); returns it."""
    if current_world().distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor`` (same shape on all ranks) along dim 0, in rank order."""
    world = current_world()
    if not world.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel over the trainable tensors when distributed, else the model itself."""
    if not current_world().distributed:
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # Buffers are constants here (position indices), so no per-step broadcast of them.
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None, **no_buffer_sync)


# --- data: shares of a global batch ---------------------------------------------------------------


def local_batch_size(global_batch: int, world: World, accumulate: int = 1) -> int:
    """This process's share of the global batch, refused unless it also splits into ``accumulate``
    equal micro-batches (``[train] accumulate``)."""
    if global_batch % (world.size * accumulate):
        raise PaceError(f"[data] batch_size = {global_batch} is the global batch and must divide evenly over "
                        f"{_split_into(world.size, accumulate)}; {_split_remedy(world.size, accumulate)}")
    return global_batch // world.size


def global_batch_size(batch_size: int, train_samples: int, world: World, accumulate: int = 1) -> int:
    """The global batch one step takes: ``[data] batch_size``, or the whole training split when that
    is smaller; refused, as :func:`local_batch_size` does, before any model is built."""
    if train_samples >= batch_size:
        local_batch_size(batch_size, world, accumulate)
        return batch_size
    parts = world.size * accumulate
    if train_samples % parts:
        raise PaceError(f"[data] batch_size = {batch_size} is more than the {train_samples} training images, so "
                        f"each step takes all {train_samples}, which do not divide evenly over "
                        f"{_split_into(world.size, accumulate)}; set batch_size to a multiple of {parts} of at "
                        f"most {train_samples}")
    return train_samples


def _split_into(processes: int, accumulate: int) -> str:
    if accumulate == 1:
        return f"{processes} processes"
    micro_batches = f"[train] accumulate = {accumulate} micro-batches"
    return micro_batches if processes == 1 else f"{processes} processes x {micro_batches}"


def _split_remedy(processes: int, accumulate: int) -> str:
    if accumulate == 1:
        return f"use a multiple of {processes} or another process count"
    return f"use a multiple of {processes * accumulate}, another process count or another accumulate"


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank r's rows of every global batch: the same global batches as one process would take."""

    def __init__(self, global_batches: Sampler[list[int]], world: World):
        self.global_batches = global_batches
        self.world = world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches:
            share = len(batch) // self.world.size
            yield batch[self.world.rank * share:(self.world.rank + 1) * share]

    def __len__(self) -> int:
        return len(self.global_batches)


def shard_range(count: int, world: World) -> range:
    """Rank r's contiguous share of ``count`` items for evaluation (sizes differ by at most one)."""
    start = count * world.rank // world.size
    stop = count * (world.rank + 1) // world.size
    return range(start, stop)


# --- random draws that do not depend on who draws them ----------------------------------------------


class SampleLayout:
    """Where this process's samples sit in the global batch, and the step's shared generator.

    Every rank draws the tensor for the whole global batch (same generator, same order of draws)
    and keeps its own rows, so a sample's noise and drop masks are the same in one process and in
    N. Drawing B_global rows instead of B_local costs a few vector ops per layer, next to the
    layer's matmuls.
    """

    def __init__(self, generator: torch.Generator, global_size: int, offset: int, local_size: int):
        self.generator = generator
        self.global_size = global_size
        self.offset = offset
        self.local_size = local_size

    @classmethod
    def for_step(cls, generator: torch.Generator, seed: int, step: int, global_size: int, offset: int,
                 local_size: int) -> "SampleLayout":
        generator.manual_seed(((seed & 0xFFFFFFFF) << 32) | (step & 0xFFFFFFFF))
        return cls(generator, global_size, offset, local_size)

    def draw(self, rows: int, rest: tuple[int, ...], *, copies: int, normal: bool, dtype: torch.dtype) -> Tensor:
        """A [rows, *rest] tensor of N(0, 1) (``normal``) or U[0, 1) values for this rank's rows.

        ``rows`` holds ``copies`` blocks of this rank's samples (two for PACE's paired batch),
        each sample repeated over ``rows / (copies · local_size)`` consecutive rows (Swin windows).
        """
        per_sample = rows // (copies * self.local_size)
        if per_sample * copies * self.local_size != rows:
            raise RuntimeError(f"cannot lay {rows} rows over {copies} x {self.local_size} samples")
        shape = (copies, self.global_size * per_sample) + tuple(rest)
        make = torch.randn if normal else torch.rand
        full = make(shape, generator=self.generator, device=self.generator.device, dtype=torch.float32)
        mine = full[:, self.offset * per_sample:(self.offset + self.local_size) * per_sample]
        return mine.reshape((rows,) + tuple(rest)).to(dtype)


# --- launching: `pace train --nproc N` is torchrun's launcher, started for one machine ------------


def launch_local(nproc: int, pace_args: list[str], device_choice: str = "auto") -> int:
    """Run ``python -m pace_cli <pace_args>`` as ``nproc`` processes on this machine with torchrun's
    own launcher (standalone rendezvous); returns the exit code to report.

    A stop signal to this process reaches every rank through the launcher (each saves nothing but
    rank 0, which writes the checkpoint); the code is then 128 + the signal, as for one process.
    A failed rank makes the launcher stop the others; the code is the failed rank's.
    """
    if nproc < 1:
        raise PaceError(f"--nproc {nproc} must be at least 1")
    uses_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if uses_cuda and nproc > torch.cuda.device_count():
        raise PaceError(f"--nproc {nproc} but this machine has {torch.cuda.device_count()} CUDA device(s) for NCCL; "
                        f"use --nproc {torch.cuda.device_count()} or fewer, or set [train] device = 'cpu' (Gloo)")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # Split the cores between the processes instead of torchrun's default of one thread each.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc), "--max-restarts", "0", "-m", "pace_cli", *pace_args])
    try:
        run(args)
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    except ChildFailedError as failed:
        codes = {rank: failure.exitcode for rank, failure in failed.failures.items()}
        first = codes.get(0) if codes.get(0, 0) > 0 else next((c for c in codes.values() if c > 0), None)
        if first is None:  # killed by a signal: exitcode is minus the signal number
            first = 128 + abs(next(iter(codes.values())))
        return first
    return 0
