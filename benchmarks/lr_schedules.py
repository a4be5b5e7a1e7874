"""Mean learning rate of the two ``[optim] schedule`` curves over a run (issue 18, item 3).

    python benchmarks/lr_schedules.py [--epochs 100] [--warmup 10] [--steps-per-epoch 25] [--json]

For each peak lr (default 5e-3, the few-shot/FGVC/domain-adaptation setting, and 1e-3, VTAB-1K's)
it averages, over every training step, the rate pace's ``LearningRateSchedule`` gives under
``per_step`` and under ``epoch`` (warm-up start 1e-6, floor 1e-5 as in the paper recipes), and
prints both means and their ratio. The ``epoch`` curve is also checked against timm's own
``CosineLRScheduler`` stepped once per epoch as the PACE authors do (``step(e)`` after epoch e):
the script fails if any step's rate differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

START, FLOOR = 1e-6, 1e-5


def pace_rates(kind: str, *, lr: float, epochs: int, warmup: int, steps_per_epoch: int) -> list[float]:
    from pace_cli.recipe import OptimSection
    from pace_cli.training.schedule import LearningRateSchedule

    optim = OptimSection(schedule=kind, lr=lr, warmup_epochs=warmup, warmup_start_lr=START, min_lr=FLOOR)
    schedule = LearningRateSchedule.for_run(optim, steps_per_epoch=steps_per_epoch, epochs=epochs)
    return [schedule.at(step) for step in range(schedule.total_steps)]


def timm_rates(*, lr: float, epochs: int, warmup: int, steps_per_epoch: int) -> list[float]:
    """The authors' loop: timm's scheduler built on the optimiser, read during each epoch, stepped after it."""
    import torch
    from timm.scheduler import CosineLRScheduler

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = CosineLRScheduler(optimizer, t_initial=epochs, warmup_t=warmup, lr_min=FLOOR,
                                      warmup_lr_init=START, cycle_decay=0.1)
    rates = []
    for epoch in range(epochs):
        rates += [optimizer.param_groups[0]["lr"]] * steps_per_epoch
        scheduler.step(epoch)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10, help="warm-up epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=25, help="the mean under per_step depends on it a little")
    parser.add_argument("--lr", type=float, nargs="+", default=[5e-3, 1e-3], help="peak learning rates")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    rows = []
    for lr in args.lr:
        shape = dict(lr=lr, epochs=args.epochs, warmup=args.warmup, steps_per_epoch=args.steps_per_epoch)
        per_step, epoch = pace_rates("per_step", **shape), pace_rates("epoch", **shape)
        timm = timm_rates(**shape)
        if epoch != timm:
            first = next(i for i, (a, b) in enumerate(zip(epoch, timm)) if a != b)
            print(f"epoch schedule differs from timm's at step {first}: {epoch[first]!r} vs {timm[first]!r}",
                  file=sys.stderr)
            return 1
        mean_step, mean_epoch = sum(per_step) / len(per_step), sum(epoch) / len(epoch)
        rows.append({"lr": lr, "mean_per_step": mean_step, "mean_epoch": mean_epoch, "mean_timm": sum(timm) / len(timm),
                     "ratio_epoch_to_per_step": mean_epoch / mean_step, "timm_equal_every_step": True})
    setting = {"epochs": args.epochs, "warmup_epochs": args.warmup, "warmup_start_lr": START, "min_lr": FLOOR,
               "steps_per_epoch": args.steps_per_epoch}
    if args.json:
        print(json.dumps({"setting": setting, "results": rows}, indent=2))
        return 0
    print(f"{args.epochs} epochs, warm-up {args.warmup} from {START:g}, floor {FLOOR:g}, "
          f"{args.steps_per_epoch} steps per epoch")
    print(f"{'lr':>8} {'per_step mean':>14} {'epoch mean':>12} {'epoch/per_step':>15}  epoch == timm")
    for row in rows:
        print(f"{row['lr']:>8g} {row['mean_per_step']:>14.6e} {row['mean_epoch']:>12.6e} "
              f"{row['ratio_epoch_to_per_step']:>15.4f}  every step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
