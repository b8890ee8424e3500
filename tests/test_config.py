from pathlib import Path

import pytest

from pipeline.core.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def test_defaults_and_shipped_configs_load():
    assert isinstance(load_config(), Config)
    for name in ("demo.yaml", "deepfashion.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert cfg.dataset.root


def test_wrong_type_names_field_and_value(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  iterations: lots\n")
    with pytest.raises(ConfigError, match=r"train\.iterations.*'lots'"):
        load_config(p)


def test_unknown_key_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("pairs:\n  min_valid: 3\n")
    with pytest.raises(ConfigError, match=r"pairs\.min_valid"):
        load_config(p)
    p.write_text("trian: {}\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config(p)


def test_overrides_parse_and_validate():
    cfg = load_config(
        None, ["train.iterations=12", "ray.address=null", "evaluate.metrics=ssim,psnr"]
    )
    assert cfg.train.iterations == 12 and cfg.ray.address is None
    assert cfg.evaluate.metrics == ["ssim", "psnr"]
    with pytest.raises(ConfigError, match=r"train\.batch_size.*below the minimum"):
        load_config(None, ["train.batch_size=0"])
    with pytest.raises(ConfigError, match=r"generate\.dtype.*'int4'"):
        load_config(None, ["generate.dtype=int4"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.iterations"])
    # Maps rendered where they are used are one-hot: a sigma needs the exported files.
    with pytest.raises(ConfigError, match=r"posemaps.*gaussian_sigma needs export: true"):
        load_config(None, ["posemaps.export=false", "posemaps.gaussian_sigma=2.0"])


def test_floats_accept_ints_but_bools_are_not_ints():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match=r"train\.ngf"):
        load_config(None, ["train.ngf=true"])


def test_hash_changes_with_section():
    a, b = load_config(), load_config(None, ["pairs.seed=5"])
    assert a.section_hash("pairs") != b.section_hash("pairs")
    assert a.section_hash("train") == b.section_hash("train")
