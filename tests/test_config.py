"""Config keys, renames and presets."""

from __future__ import annotations

import dataclasses

import pytest

from bytelm import config as C


def test_old_head_keys_name_their_new_spelling(tmp_path):
    cfg = C.load_preset("tiny")
    with pytest.raises(C.ConfigError, match="'model.heads' is now 'model.out_heads'"):
        C.override(cfg, {"model.heads.n": "2"})
    with pytest.raises(
        C.ConfigError, match="'model.latent.n_heads' is now 'model.latent.attn_heads'"
    ):
        C.override(cfg, {"model.latent.n_heads": "2"})
    old = tmp_path / "old.toml"
    old.write_text("[model.encoder]\nn_heads = 2\n")
    with pytest.raises(C.ConfigError, match="'model.encoder.n_heads' is now"):
        C.load(old)


def test_checkpoint_configs_with_old_keys_are_upgraded():
    cfg = C.override(C.load_preset("tiny"), {"model.out_heads.n": "3"})
    d = C.to_dict(cfg)
    m = d["model"]
    m["heads"] = m.pop("out_heads")
    for stack in ("encoder", "latent", "decoder"):
        m[stack]["n_heads"] = m[stack].pop("attn_heads")
    d["transformer"]["n_heads"] = d["transformer"].pop("attn_heads")
    assert C.from_dict(C.RunConfig, C.upgrade(C.RunConfig, d)) == cfg


def test_checkpoint_configs_from_before_head_kinds_keep_block_heads():
    """Output heads were all transformer blocks trained with every head's loss before
    out_heads.kind, draft_grad and draft_sample existed: an older config means that, whatever
    the defaults."""
    d = C.to_dict(C.load_preset("tiny"))
    for key in ("kind", "draft_grad", "draft_sample"):
        d["model"]["out_heads"].pop(key)
    heads = C.from_dict(C.RunConfig, C.upgrade(C.RunConfig, d)).model.out_heads
    assert (heads.kind, heads.draft_grad, heads.draft_sample) == ("block", True, 1.0)
    # a key that is there is kept
    d["model"]["out_heads"]["kind"] = "linear"
    assert C.from_dict(C.RunConfig, C.upgrade(C.RunConfig, d)).model.out_heads.kind == "linear"


def test_every_preset_ships_in_the_package_and_loads():
    names = C.preset_names()
    assert {"tiny", "demo", "entropy", "sweep"} <= set(names)
    for name in names:
        assert isinstance(C.load_preset(name), C.RunConfig)
    with pytest.raises(C.ConfigError, match="unknown preset 'nope'; known presets: demo"):
        C.load_preset("nope")


def test_entropy_model_defaults_to_the_sibling_run_not_the_cwd(tmp_path):
    pc = C.PatcherConfig(name="entropy")
    assert C.entropy_model_path(pc, tmp_path / "runs" / "demo") == (
        tmp_path / "runs" / "entropy" / "checkpoint"
    )
    given = dataclasses.replace(pc, entropy_model=str(tmp_path / "mine"))
    assert C.entropy_model_path(given, "anything") == tmp_path / "mine"
