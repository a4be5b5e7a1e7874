from pace_cli.cli.app import app

app(prog_name="pace")
