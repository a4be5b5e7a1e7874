"""The noise mode of the ablations lives in draw_noise and add_noisy alone: every noisy forward in the
package must hand add_noisy the batch state, or its kind would silently train with PACE's Gaussian
noise under ``noise = "additive"`` or ``perturb = "output"``."""

import ast
from pathlib import Path

import torch

from pace_cli.adapters import NoiseMode, add_noisy
from pace_cli.regularizer import PairState

PACKAGE = Path(__file__).resolve().parents[2] / "pace_cli"


def test_every_add_noisy_call_passes_the_batch_state():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "add_noisy":
                calls.append((path.relative_to(PACKAGE).as_posix(), node.lineno,
                              any(k.arg == "batch" for k in node.keywords)))
    assert calls, "no add_noisy call found"
    assert all(passes for *_, passes in calls), [c for c in calls if not c[2]]


def test_add_noisy_without_a_batch_state_is_paces_formula():
    base, delta, z = torch.randn(3, 5, 4), torch.randn(3, 5, 4), torch.randn(3, 4)
    torch.testing.assert_close(add_noisy(base, delta, z), base + z[:, None] * delta)
    additive = PairState(noise_mode=NoiseMode("additive"))
    torch.testing.assert_close(add_noisy(base, delta, z, batch=additive), base + delta + z[:, None])
