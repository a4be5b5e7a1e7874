"""The [log] section: tracker names checked torch-free, --set like any key, unread keys warned, sweep naming."""

from pathlib import Path

import pytest
from helpers import tiny_recipe_text

from pace_cli.errors import PaceError
from pace_cli.recipe import ineffective_settings, parse_recipe, recipe_to_toml
from pace_cli.recipe.log import sweep_log_overrides

RECIPE = tiny_recipe_text()


def test_trackers_default_to_none_and_set_round_trips_through_the_saved_recipe():
    assert parse_recipe(RECIPE).log.trackers == []
    recipe = parse_recipe(RECIPE, ['log.trackers=["mlflow", "tensorboard"]', "log.project=digits"])
    assert recipe.log.trackers == ["mlflow", "tensorboard"] and recipe.log.project == "digits"
    assert parse_recipe(recipe_to_toml(recipe)) == recipe


@pytest.mark.parametrize("value,message", [
    ('["tensorbord"]', "[log] trackers = [\"tensorbord\"]: 'tensorbord' is not a tracker; use any of tensorboard, "
                       "wandb, mlflow"),
    ('["wandb", "mlflow", "wandb"]', "'wandb' is listed twice; name each tracker once"),
    ("wandb", "[log] trackers = 'wandb': must be a list"),
])
def test_bad_tracker_lists_are_one_line_naming_the_key(value, message):
    with pytest.raises(PaceError) as refused:
        parse_recipe(RECIPE, [f"log.trackers={value}"])
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_log_keys_no_tracker_reads_are_warnings():
    assert ineffective_settings(parse_recipe(RECIPE, ["log.project=digits", "log.dir=logs"])) == [
        "[log] project, dir set but ignored: trackers is empty, so only metrics.jsonl is written"]
    assert ineffective_settings(parse_recipe(RECIPE, ['log.trackers=["tensorboard"]', "log.group=g"])) == [
        "[log] group set but ignored: they are read by wandb and mlflow only"]
    assert ineffective_settings(parse_recipe(RECIPE, ['log.trackers=["wandb"]', "log.group=g", "log.dir=d"])) == []


def test_a_sweep_names_its_runs_by_folder_and_keeps_what_the_recipe_sets():
    sweep = Path("runs/my-sweep")
    run_dir = sweep / "runs" / "lambda-1_seed-0"
    tracked = parse_recipe(RECIPE, ['log.trackers=["wandb"]']).log
    assert sweep_log_overrides(tracked, sweep, run_dir) == [
        'log.run_name="runs/lambda-1_seed-0"', 'log.dir="runs/my-sweep"', 'log.group="my-sweep"']
    chosen = parse_recipe(RECIPE, ['log.trackers=["wandb"]', "log.group=mine", "log.dir=/logs"]).log
    assert sweep_log_overrides(chosen, sweep, run_dir) == ['log.run_name="runs/lambda-1_seed-0"']
    board = parse_recipe(RECIPE, ['log.trackers=["tensorboard"]']).log
    assert [item.split("=")[0] for item in sweep_log_overrides(board, sweep, run_dir)] == ["log.run_name", "log.dir"]
    assert sweep_log_overrides(parse_recipe(RECIPE).log, sweep, run_dir) == []  # untracked sweeps: recipes unchanged
