"""Settings files plus key=value overrides: a mapping setting is overridden key by key."""

from __future__ import annotations

import pytest

from tandem.errors import ConfigError
from tandem.recipe import load_recipe


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("mine:\n  high_from_precision: 0.75\n  denoise_depth: 100\ntrain:\n  chunk_size: 16\n")
    return path


def test_mapping_override_merges_key_by_key(recipe_file):
    cfg = load_recipe(recipe_file, ["mine={denoise_depth: 0}", "train={lr_reranker: 0.00001}"])
    assert cfg.mine == {"high_from_precision": 0.75, "denoise_depth": 0}  # the file's other key stays
    assert cfg.train == {"chunk_size": 16, "lr_reranker": 0.00001}
    # the merged mapping is what the stages get
    assert cfg.mine_settings(100).high_from_precision == 0.75 and cfg.mine_settings(100).denoise_depth == 0


def test_mapping_override_null_drops_a_key_or_the_mapping(recipe_file):
    assert load_recipe(recipe_file, ["mine={denoise_depth: null}"]).mine == {"high_from_precision": 0.75}
    assert load_recipe(recipe_file, ["mine=null"]).mine == {}
    assert load_recipe(recipe_file, ["mine=null"]).mine_settings(100).denoise_depth == 0  # MineSettings' default


def test_mapping_override_without_a_file_and_bad_values(recipe_file):
    assert load_recipe(None, ["mine={denoise_depth: 50}"]).mine == {"denoise_depth": 50}
    with pytest.raises(ConfigError, match="mine: expected a mapping"):
        load_recipe(recipe_file, ["mine=5"])
    with pytest.raises(ConfigError, match="mine: .*denoise_dept"):  # an unknown key still names itself
        load_recipe(recipe_file, ["mine={denoise_dept: 5}"]).mine_settings(100)


def test_the_retriever_only_row_is_one_setting_and_older_configs_still_mean_the_same(tmp_path):
    """`retriever_only` names the report's baseline row; the three flags configs used before it translate."""
    from tandem.recipe import RecipeConfig

    warm = {"retriever_warmup_steps": 5}
    assert load_recipe(None, warm).retriever_only_row == "warmup"
    assert load_recipe(None, {}).retriever_only_row == ""  # no warm-up: nothing to report as it
    assert load_recipe(None, {**warm, "retriever_only": "equal-steps"}).retriever_only_row == "equal-steps"
    assert load_recipe(None, {**warm, "retriever_only": "none"}).retriever_only_row == ""
    # as older configs wrote it (steps first, then equal-steps, as they ranked them)
    assert load_recipe(None, ["retriever_only_steps=3"]).retriever_only_row == "steps"
    old = tmp_path / "old.yaml"
    old.write_text("retriever_warmup_steps: 5\nretriever_only_steps: 0\nretriever_only_equal_steps: true\n")
    assert load_recipe(old).retriever_only_row == "equal-steps"
    assert load_recipe(None, {**warm, "index_retriever_warmup": "false"}).retriever_only_row == ""
    assert load_recipe(None, {**warm, "retriever_only_steps": 2, "retriever_only_equal_steps": True}).retriever_only \
        == "steps"
    assert RecipeConfig(**RecipeConfig.upgrade({"retriever_only_steps": 4})).retriever_only_row == "steps"
    with pytest.raises(ConfigError, match="retriever_only_steps > 0"):
        _ = load_recipe(None, {"retriever_only": "steps"}).retriever_only_row
    with pytest.raises(ConfigError, match="expected one of"):
        _ = load_recipe(None, {"retriever_only": "alone"}).retriever_only_row
