from pace_cli.cli import app

app(prog_name="pace")
