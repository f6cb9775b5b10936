"""What an install ships: the presets are read through the package (importlib.resources, as an installed
wheel has them), and pyproject.toml installs every package and the presets."""

import dataclasses
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from ovseg3d.config import (
    PREPARE,
    PRESETS,
    UNBOUNDED,
    ConfigError,
    TrainConfig,
    _field_docs,
    chosen_keys,
    for_unbounded,
    preset_names,
    preset_path,
    resolve_base,
)

ROOT = Path(__file__).resolve().parent.parent


def _documented_presets() -> list[str]:
    """The names that ``ovseg3d train --help`` gives for ``--preset``: "... from configs/ (tiny, cpu, gpu) ..."."""
    found = re.search(r"\(([a-z0-9_, ]+)\)", _field_docs(TrainConfig)["preset"])
    assert found, "the --preset help no longer lists the presets"
    return found.group(1).split(", ")


@pytest.mark.parametrize("name", sorted({*_documented_presets(), TrainConfig().preset}))
def test_every_documented_preset_is_found_through_the_package_and_parses(name):
    path = preset_path(name)
    assert path == resources.files(PRESETS) / f"{name}.toml" and path.is_file()
    values = tomllib.loads(path.read_text())
    cfg = resolve_base(name, None)
    assert cfg.preset == name and values
    for key, value in values.items():
        if key in (UNBOUNDED, PREPARE):  # applied once the scene is known / read by ovseg3d run
            continue
        if isinstance(value, dict):  # a table sets a nested config ([teachers])
            for inner, v in value.items():
                assert getattr(getattr(cfg, key), inner) == v, f"{key}.{inner}"
        else:
            assert getattr(cfg, key) == value, key


def test_the_package_ships_exactly_the_documented_presets_and_names_them_for_an_unknown_one():
    assert preset_names() == sorted(_documented_presets())
    with pytest.raises(ConfigError, match=r"unknown preset 'nope' \(known: cpu, gpu, tiny;"):
        preset_path("nope")


def test_pyproject_installs_every_package_and_the_presets():
    """The package list is explicit (the presets' folder is mapped into the package), so a new subpackage must
    be added to it; the presets ship as package data."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setup = project["tool"]["setuptools"]
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ovseg3d").rglob("__init__.py")}
    assert set(setup["packages"]) == tree | {PRESETS}
    assert setup["package-dir"] == {PRESETS: "configs"} and setup["package-data"][PRESETS] == ["*.toml"]
    assert project["project"]["requires-python"] == ">=3.11"  # tomllib


def test_the_unbounded_table_is_taken_only_where_the_config_keeps_the_presets_value():
    gpu = resolve_base("gpu", None)
    table = tomllib.loads(preset_path("gpu").read_text())[UNBOUNDED]
    assert table, "the gpu preset has settings for unbounded scenes"
    cfg, taken = for_unbounded(gpu)
    assert all(getattr(cfg, k) == v for k, v in table.items())
    assert len(taken) == len(table) and cfg.steps == gpu.steps  # nothing else changes
    mine = dataclasses.replace(gpu, sampler="grid", n_levels=6)  # a user's choices, by flag or config file
    cfg, taken = for_unbounded(mine)
    assert cfg.sampler == "grid" and cfg.n_levels == 6 and cfg.roi_scale == table["roi_scale"]
    assert not any(line.startswith(("sampler", "n_levels ")) for line in taken)
    assert for_unbounded(resolve_base("tiny", None)) == (resolve_base("tiny", None), [])  # no table: nothing
    cpu = resolve_base("cpu", None)  # bounded scenes train without the distortion loss, unbounded ones with it
    assert cpu.distortion_weight == 0 and for_unbounded(cpu)[0].distortion_weight > 0
    assert for_unbounded(dataclasses.replace(cpu, chosen=("distortion_weight",)))[0].distortion_weight == 0


def test_a_setting_the_user_chose_stands_even_at_the_presets_own_value(tmp_path):
    gpu = resolve_base("gpu", None)
    table = tomllib.loads(preset_path("gpu").read_text())[UNBOUNDED]
    key = next(iter(table))
    assert getattr(gpu, key) != table[key], "the test needs a key whose top-level value differs from the table's"
    same = dataclasses.replace(gpu, chosen=(key,))  # --key set to the preset's own top-level value
    cfg, taken = for_unbounded(same)
    assert getattr(cfg, key) == getattr(gpu, key) and not any(line.startswith(key + " ") for line in taken)
    assert len(taken) == len(table) - 1
    config = tmp_path / "mine.toml"
    config.write_text("n_levels = 6\n[teachers]\nkind = 'none'\n")
    args = [
        "--scene",
        "s",
        "--distortion-weight=0",
        "--no-learned-background",
        "--roi_scale",
        "2",
        "--teachers.kind",
        "x",
    ]
    assert set(chosen_keys(args, config)) == {
        "scene",
        "distortion_weight",
        "learned_background",
        "roi_scale",
        "n_levels",
        "teachers",
    }
    assert chosen_keys(["--distortion", "1"], None) == ()  # a prefix of a flag is not the flag


def test_an_unknown_key_in_a_presets_unbounded_table_is_a_config_error(tmp_path, monkeypatch):
    import ovseg3d.config as config

    bad = tmp_path / "bad.toml"
    bad.write_text("steps = 3\n[unbounded]\nno_such_key = 1\n")
    monkeypatch.setattr(config, "preset_path", lambda name: bad)
    with pytest.raises(ConfigError, match=r"\[unbounded\]: unknown config key\(s\) no_such_key"):
        resolve_base("bad", None)
