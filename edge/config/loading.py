"""Reading the TOML file, ``EDGE_*`` environment overrides, and validation with key paths."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.config.common import DEFAULT_CONFIG_PATH, ENV_PREFIX
from edge.config.root import EdgeConfig
from edge.exceptions import ConfigError
from edge.model import problems


def _env_value(raw: str) -> Any:
    """Environment values are strings; JSON lists, tables, numbers and booleans are decoded."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``EDGE_<SECTION>__<KEY>[__<SUBKEY>...]`` variables as a nested dict (keys lower-cased)."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            continue
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[path[-1]] = _env_value(raw)
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: ``--config``, else ``$EDGE_CONFIG``, else the system default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("EDGE_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def parse_config(data: Mapping[str, Any], source: str = "") -> EdgeConfig:
    """Validate already-loaded data; raise ConfigError listing every problem with its key path."""
    try:
        return EdgeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems(exc), source) from None


def merge_config(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, table by table (for overrides and the live ``cfg/desired``)."""
    return _merge(base, over)


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> EdgeConfig:
    """Read the TOML file, apply ``EDGE_*`` overrides and validate."""
    data, source = load_config_data(path, environ)
    return parse_config(data, source)


def load_config_data(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    """The TOML file's data with ``EDGE_*`` overrides applied, not yet validated, and its source name."""
    file = config_path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([("(file)", f"{file} does not exist; `edge init` writes a starter")], str(file)) from None
    except OSError as exc:
        raise ConfigError([("(file)", f"cannot read {file}: {exc.strerror}")], str(file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("(file)", f"not valid TOML: {exc}")], str(file)) from None
    data = _merge(data, env_overrides(os.environ if environ is None else environ))
    return data, str(file)
