"""The gradient norm the paper plots (Fig. 2a): of the validation loss, not the training loss.

``grad_norm`` in the records is the training gradient of CE + λ·consistency, clipped or not,
averaged over an epoch's steps. ``val_grad_norm`` is ||∂L_val/∂θ||₂ over the trainable tensors
θ, where L_val is the mean cross-entropy over the whole validation split with the model in eval
mode (no PACE noise, no drop path): a measurement, so it leaves training exactly as it was.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from pace_cli import distributed


def validation_gradient_norm(model: nn.Module, loader: torch.utils.data.DataLoader, params: Sequence[nn.Parameter],
                             *, device: torch.device, autocast_dtype: torch.dtype | None = None,
                             sharded: bool = False) -> float:
    """||∇θ mean CE||₂ over every sample ``loader`` yields (with ``sharded``: over all processes' shares).

    ``model`` is the plain module, never a DistributedDataParallel wrapper: its reducer must not
    see this backward. Each batch is differentiated on its own with :func:`torch.autograd.grad`
    and the gradients of the summed loss are added up, which by linearity equals one backward of
    the whole split's summed loss while holding only one batch's activations. ``autograd.grad``
    returns the gradients instead of adding them to ``.grad``, so the optimiser's gradients stay
    as they were. With ``sharded`` each process sums its share and one all-reduce adds the shares
    and their sample counts. Every random generator (torch's CPU and CUDA ones, Python's, NumPy's,
    the loader's) is restored afterwards, so a run logging this trains bit for bit as one that
    does not.
    """
    params = list(params)
    was_training = model.training
    # float64 sums: a split of many batches is added up without the order mattering much
    total = torch.zeros(sum(p.numel() for p in params) + 1, dtype=torch.float64, device=device)
    model.eval()
    try:
        with _generators_kept(loader, device):
            for images, labels, _ in loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logits = model(images)
                batch_loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
                grads = torch.autograd.grad(batch_loss, params, allow_unused=True, materialize_grads=True)
                total[:-1] += torch.cat([g.reshape(-1) for g in grads]).double()
                total[-1] += labels.shape[0]
    finally:
        model.train(was_training)
    if sharded:
        distributed.all_reduce_sum(total)
    samples = total[-1].item()
    if samples == 0:
        return float("nan")
    return (total[:-1] / samples).norm().item()


@contextmanager
def _generators_kept(loader: torch.utils.data.DataLoader, device: torch.device) -> Iterator[None]:
    """Restore every random generator the pass could advance, whatever happens inside."""
    cpu_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    loader_generator = getattr(loader, "generator", None)
    loader_state = loader_generator.get_state() if loader_generator is not None else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)
        if loader_state is not None:
            loader_generator.set_state(loader_state)
