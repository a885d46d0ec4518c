"""Load a YAML preset, apply dotted command-line overrides (`learner.lr=1e-4`), validate into a frozen `Config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configs.schema import Config


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the fix."""


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form section.key=value (e.g. learner.lr=1e-4)")
    path, raw = override.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {override!r} has an empty key in {path!r}")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {key!r} holds a value, not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key; remove it or fix its spelling (see configs/schema.py)")
        elif item["type"] == "missing":
            lines.append(f"  {where}: required; set it in the YAML or as {where}=VALUE")
        elif isinstance(item.get("input"), bool) and item["type"] in ("literal_error", "string_type"):
            lines.append(f"  {where}: {item['msg']} (got {item['input']!r}: YAML reads an unquoted no/yes/off/on as "
                         f"a boolean; quote the word, e.g. {where}='no' on the command line or \"no\" in a file)")
        else:
            lines.append(f"  {where}: {item['msg']} (got {item.get('input')!r})")
    return "invalid config:\n" + "\n".join(lines)


def config_from_dict(tree: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read `path`, apply `overrides` in order, validate. Raises ConfigError with a readable message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; presets live in configs/*.yaml")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run, policy, ...)")
    for override in overrides:
        apply_override(tree, override)
    return config_from_dict(tree)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
