"""TensorBoard: the run's records as scalars, its recipe in the hparams plugin, in one event folder per run.

The folder is ``<[log] dir or the output folder>/tensorboard/<run name>``: the run's own, not a
timestamped sub-run as ``SummaryWriter.add_hparams`` makes, so ``tensorboard --logdir`` over a
sweep shows every run as one row of one hparams table. A resumed run appends to the folder and
purges the steps past its checkpoint (``purge_step``), so the redone steps are shown once; a new
run into the folder replaces its event files.
"""

from __future__ import annotations

from typing import Any, Mapping

from pace_cli.training.loggers.base import TrackerRun, config_text, final_figure_names, flat_config, scalars

_EVENT_FILES = "events.out.tfevents.*"


class TensorBoardLogger:
    def __init__(self, run: TrackerRun):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = run.files_dir / "tensorboard" / run.name
        self.resumed = run.resumed_at_step is not None
        if not self.resumed:
            for old in self.folder.glob(_EVENT_FILES):
                old.unlink()
        purge_step = run.resumed_at_step + 1 if self.resumed else None
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=purge_step)

    def log_dict(self, payload: Mapping[str, Any], step: int) -> None:
        for tag, value in scalars(payload).items():
            self.writer.add_scalar(tag, value, step)
        # written now, so the run is watched live, and a failed write (a full disk) is raised here
        self.writer.flush()

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The recipe, flattened, as the hparams plugin's row; its columns of figures are the last values of
        the epoch scalars named in :func:`final_figure_names` (the final validation figures)."""
        if self.resumed:  # the row was written when the run started; purging keeps step 0
            return
        from torch.utils.tensorboard.summary import hparams

        values = {key: config_text(value) for key, value in flat_config(config).items()}
        for summary in hparams(values, dict.fromkeys(final_figure_names(config), 0.0)):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def close(self, finished: bool = True) -> None:
        self.writer.close()
