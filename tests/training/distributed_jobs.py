"""Run by the distributed tests under torchrun: train the jobs given as JSON, one after another.

Each job: {"recipe": TOML text, "overrides": [...], "out": dir, "resume": bool, "stop_at": step or null}.
A job with ``stop_at`` is interrupted after that step (the stop is requested on rank 0 only, as a
signal reaching one process would be; the ranks must agree to stop together).
"""

import json
import sys

from pace_cli.recipe import parse_recipe
from pace_cli.training import StopRequest, TrainingInterrupted, TrainLogger, train


class StopAfter(TrainLogger):
    def __init__(self, step, stop):
        self.at, self.stop = step, stop

    def step(self, record):
        if self.at is not None and record["step"] == self.at:
            self.stop.request()


def main() -> None:
    for job in json.loads(sys.argv[1]):
        stop = StopRequest()
        try:
            train(parse_recipe(job["recipe"], job.get("overrides", [])), output_dir=job["out"], overwrite=True,
                  resume=job.get("resume", False), stop=stop, logger=StopAfter(job.get("stop_at"), stop))
        except TrainingInterrupted:
            pass


if __name__ == "__main__":
    main()
