"""[adapter] keys a kind reads differently: ia3's own default targets and feed-forward layers, and
feedforward inert for every other kind."""
from __future__ import annotations

from helpers import tiny_recipe_text

from pace_cli.recipe import ineffective_settings, parse_recipe, recipe_to_toml
from pace_cli.recipe.schema import is_set


def test_ia3_takes_its_own_defaults_when_targets_are_unset():
    adapter = parse_recipe(tiny_recipe_text(adapter={"kind": "ia3"})).adapter
    assert adapter.targets == ["qkv", "fc2"] and adapter.feedforward == ["fc2"]
    assert not is_set(adapter, "targets") and not is_set(adapter, "feedforward")


def test_set_keys_win_over_the_kind_defaults():
    adapter = parse_recipe(tiny_recipe_text(adapter={"kind": "ia3", "targets": ["qkv", "proj", "fc1"],
                                                     "feedforward": []})).adapter
    assert adapter.targets == ["qkv", "proj", "fc1"] and adapter.feedforward == []
    switched = parse_recipe(tiny_recipe_text(), ["adapter.kind=ia3", "adapter.feedforward=[\"fc2\", \"fc1\"]"]).adapter
    assert switched.targets == ["qkv", "fc2"] and switched.feedforward == ["fc2", "fc1"]


def test_other_kinds_keep_the_recipe_defaults():
    for kind in ("lora_add", "dora"):
        adapter = parse_recipe(tiny_recipe_text(adapter={"kind": kind})).adapter
        assert adapter.targets == ["qkv", "proj", "fc1", "fc2"] and adapter.feedforward == []


def test_saved_recipe_reads_back_the_same():
    recipe = parse_recipe(tiny_recipe_text(adapter={"kind": "ia3"}))
    again = parse_recipe(recipe_to_toml(recipe))
    assert again.adapter == recipe.adapter


def test_feedforward_for_another_kind_is_inert():
    recipe = parse_recipe(tiny_recipe_text(adapter={"kind": "dora", "feedforward": ["fc2"]}))
    notes = ineffective_settings(recipe)
    assert any(note.startswith("[adapter] feedforward set but ignored: kind = 'dora'") for note in notes), notes
    assert not any("feedforward" in note for note in ineffective_settings(
        parse_recipe(tiny_recipe_text(adapter={"kind": "ia3", "feedforward": ["qkv"]}))))
