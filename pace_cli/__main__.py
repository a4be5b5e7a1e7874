"""``python -m pace_cli``: the same app as the ``pace`` command (what torchrun launches)."""

from pace_cli.cli import app

app(prog_name="pace")
