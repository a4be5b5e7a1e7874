import os

import pytest


@pytest.fixture(autouse=True)
def _environment_restored(tmp_path, monkeypatch):
    """Trackers read (and pace's MLflow defaults set) environment variables: each test gets its own, offline."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith(("WANDB_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    yield
    os.environ.clear()
    os.environ.update(saved)
