"""DataLoaders with a reproducible order, their worker defaults, and when to cache decoded images."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from pace_cli.data.datasets import FileDataset, PaceDataset
from pace_cli.errors import PaceError

# "auto" caches a split's decoded images when they take at most this much memory (uint8).
CACHE_AUTO_BYTES = 1 << 30


def cache_wanted(ds: PaceDataset, cache: bool | str) -> bool:
    """Whether ``[data] cache`` (true, false or "auto") turns the decoded-image cache on for ``ds``.

    Only ``imagefolder`` and ``vtab1k`` decode to a fixed size on access; the in-memory sources
    are arrays already, and ``fewshot``/``fgvc`` crop at random after an aspect-keeping resize
    (not cached yet). "auto" caches a split whose decoded images fit in ``CACHE_AUTO_BYTES``
    (VTAB-1k's 1,000 training images at 224 px take 144 MiB; 1 GiB holds about 7,100 RGB images
    at 224 px).
    """
    if cache not in (True, False, "auto"):
        raise PaceError(f"[data] cache = {cache!r}; use true, false or \"auto\"")
    if not (isinstance(ds, FileDataset) and ds.cacheable) or cache is False:
        return False
    return cache is True or ds.cache_bytes() <= CACHE_AUTO_BYTES


def make_loader(dataset: PaceDataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                drop_last: bool = False, num_workers: int | str = 0, world=None, pin_memory: bool | None = None,
                persistent_workers: bool | None = None, prefetch_factor: int | None = None) -> DataLoader:
    """Wrap ``dataset`` in a DataLoader whose shuffle order depends only on ``seed``.

    Batches are ``(images [B,C,H,W], labels [B], indices [B])``. The generator keeps
    advancing between epochs, so each epoch gets a new but reproducible order.

    With a multi-process ``world`` (:class:`pace_cli.distributed.World`), ``batch_size`` is the
    global batch: every rank draws the same global batches and yields its own share of each.

    ``num_workers`` may be "auto" (:func:`default_num_workers`). ``pin_memory`` defaults to
    whether CUDA is available (page-locked batches copy to the GPU asynchronously);
    ``persistent_workers`` defaults to true whenever there are workers, so they are not
    re-forked each epoch, except for data sets whose reads are keyed by epoch (``keyed_by_epoch``:
    the augmented training sets; their workers must be re-created to see the new epoch).
    """
    if int(batch_size) <= 0:
        raise PaceError(f"batch size {batch_size} must be a positive integer")
    if drop_last and len(dataset) < batch_size:
        raise PaceError(
            f"split '{getattr(dataset, 'split', '?')}' has {len(dataset)} samples, fewer than "
            f"batch size {batch_size}, so dropping the last partial batch leaves nothing; "
            "lower the batch size"
        )
    workers = default_num_workers() if num_workers == "auto" else int(num_workers)
    if workers < 0:
        raise PaceError(f"num_workers = {num_workers} must be >= 0 or \"auto\"")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        # Persistent workers keep their own copy of the data set, so a per-epoch setting made in
        # the main process (set_epoch of the augmented training sets) would never reach them.
        persistent_workers = workers > 0 and not getattr(dataset, "keyed_by_epoch", False)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    extra = {}
    if workers > 0:
        extra["persistent_workers"] = bool(persistent_workers)
        if prefetch_factor is not None:
            extra["prefetch_factor"] = int(prefetch_factor)
    if world is not None and world.distributed:
        from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

        from pace_cli.distributed import ShardedBatchSampler, local_batch_size

        local_batch_size(int(batch_size), world)  # refuses a batch that does not divide
        order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        global_batches = BatchSampler(order, int(batch_size), drop_last)
        return DataLoader(dataset, batch_sampler=ShardedBatchSampler(global_batches, world), generator=generator,
                          num_workers=workers, pin_memory=bool(pin_memory), **extra)
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, generator=generator,
                      drop_last=drop_last, num_workers=workers, pin_memory=bool(pin_memory), **extra)


def default_num_workers() -> int:
    """Workers for ``num_workers = "auto"``: none on a CPU-only machine, where decoding in the
    main process competes with the model for the same cores anyway; with CUDA, enough to keep the
    GPU fed (up to 8, leaving a core for the main process)."""
    if not torch.cuda.is_available():
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))
