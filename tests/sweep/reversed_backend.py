"""A toy sweep backend for tests: the sequential backend, taking the planned runs last to first.

It stands for a backend that finishes runs in another order than the plan (as parallel ones do).
"""

from pace_cli.sweep.backends.sequential import SequentialBackend


class ReversedBackend:
    def __init__(self):
        self.seen = []

    def run(self, runs, context):
        self.seen.extend(run.run_dir.name for run in runs)
        yield from SequentialBackend().run(list(reversed(runs)), context)
