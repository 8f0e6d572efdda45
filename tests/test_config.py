"""server.toml stays in sync with the config schema (fastvc.config), the single source of defaults."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest

from fastvc.config import Config, ConfigError, config_from_dict, load_config
from conftest import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_server_toml_lists_every_option_with_its_default():
    data = tomllib.loads((REPO_ROOT / "server.toml").read_text())
    defaults = Config()
    seedvc_exists = importlib.util.find_spec("fastvc.engine.seedvc") is not None
    assert set(data) == {f.name for f in dataclasses.fields(Config)}
    for section in dataclasses.fields(Config):
        schema = dataclasses.asdict(getattr(defaults, section.name))
        assert set(data[section.name]) == set(schema), f"[{section.name}] differs from the schema"
        for name, default in schema.items():
            if (section.name, name) == ("engine", "name") and not seedvc_exists:
                assert data["engine"]["name"] == "passthrough"  # until the seedvc engine lands
                continue
            assert data[section.name][name] == default, f"[{section.name}] {name}"
    load_config(REPO_ROOT / "server.toml")


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError, match="unknown option"):
        config_from_dict({"server": {"prot": 1}})
