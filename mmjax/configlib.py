"""Config files, their `get_config(arg)` variants, command-line overrides and the resolved-config JSON.

A config file is a Python module with `get_config(arg: str | None) -> ml_collections.ConfigDict`. The string after
the colon in `configs/vit/digits.py:variant=S/4,steps=500` is the `arg`; `parse_arg` turns it into typed values,
refusing keys the config does not declare. Overrides such as `--config.optim.lr=3e-4` are applied to the *locked*
config, so a misspelt field fails with its name instead of silently creating a new one.

Values are checked too: a boolean accepts only true/false, 1/0, yes/no, on/off (any case), and an enum field
(`nonfinite`, `optim.name`, `model.remat_policy`, ...) only the values declared for it with `declare_choices`,
next to the defaults that introduce it (`mmjax.train.defaults.CHOICES` is the trainer's table). Choices are checked
when a config file is loaded, on every override, and by the trainer once the task's module has declared its own.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config file, variant string or override that cannot be applied; the message names the culprit."""


TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")

# dotted field (an fnmatch pattern: `*remat_policy` matches `model.lm.remat_policy`) -> its allowed values
_CHOICES: dict[str, tuple[Any, ...]] = {}


def declare_choices(table: Mapping[str, Sequence[Any]]) -> None:
    """Declares the allowed values of enum fields, `{dotted field or fnmatch pattern: values}`.

    Declare them where the field's default is defined (the trainer's in `mmjax.train.defaults`); a later
    declaration of the same pattern replaces the earlier one.
    """
    for pattern, values in table.items():
        _CHOICES[pattern] = tuple(values)


def allowed_values(dotted: str) -> tuple[Any, ...] | None:
    """The declared values of a dotted field (an exact declaration wins over a pattern); None if undeclared."""
    if dotted in _CHOICES:
        return _CHOICES[dotted]
    for pattern, values in _CHOICES.items():
        if fnmatch.fnmatchcase(dotted, pattern):
            return values
    return None


def _check_choice(dotted: str, value: Any) -> None:
    allowed = allowed_values(dotted)
    if allowed is not None and value not in allowed:
        raise ConfigError(f"config.{dotted}={value!r} is not allowed; choose one of {list(allowed)}")


def flat_items(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted field, value) for every leaf of a nested config or dict."""
    for key, value in config.items():
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            yield from flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def check_choices(config: ml_collections.ConfigDict) -> None:
    """Refuses any enum field whose value is not one of its declared choices, naming the field and the choices."""
    for dotted, value in flat_items(config):
        _check_choice(dotted, value)


def parse_bool(raw: Any, where: str) -> bool:
    """true/false, 1/0, yes/no, on/off in any case (or a bool); anything else is refused, naming `where`."""
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{where}: {raw!r} is not a boolean; use one of {list(TRUE_WORDS + FALSE_WORDS)}")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `"key=value,key2=value2"` into a ConfigDict typed like `defaults`; unknown keys are refused.

    Values are cast to the type of their default (see `parse_bool` for booleans); a bare `key` means `key=True`.
    A value that does not fit its default's type is refused with the key and the expected type.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return out
    for item in arg.split(","):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"unknown config variant key {key!r} in {arg!r}; known: {sorted(defaults)}")
        default = defaults[key]
        value: Any = raw.strip() if sep else True
        if isinstance(default, bool):
            value = parse_bool(value, f"config variant {key}")
        elif isinstance(default, int | float):
            try:
                value = type(default)(value)
            except ValueError:
                kind = "an integer" if isinstance(default, int) else "a number"
                raise ConfigError(f"config variant {key}={value!r} is not {kind} (in {arg!r})") from None
        out[key] = value
    return out


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` and returns its locked config, its enum fields checked.

    `get_config` refusing its `arg` (a KeyError/ValueError/TypeError, e.g. an unknown preset) is a ConfigError
    naming the file and the arg.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}" + (" (it is a directory)" if os.path.isdir(path) else ""))
    module_spec = importlib.util.spec_from_file_location(f"_mmjax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} has no get_config(arg) function")
    try:
        config = module.get_config(arg or None)
    except ConfigError:
        raise
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"{spec}: get_config refused its argument: {type(e).__name__}: {e}") from e
    check_choices(config)
    config.lock()
    return config


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies `field.sub=value` overrides (the `--config.` prefix already stripped) to a locked config.

    Values are typed like the field they replace; booleans and enum fields are checked (`parse_bool`,
    `declare_choices`).
    """
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form --config.field=value")
        *parents, leaf = dotted.split(".")
        node = config
        for i, part in enumerate(parents):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ConfigError(f"unknown config field {'.'.join(parents[: i + 1])!r} (from --config.{dotted})")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"unknown config field {dotted!r}; fields here: {sorted(node.keys())}")
        current = node[leaf]
        value = _literal(raw)
        if isinstance(current, bool):
            value = parse_bool(raw, f"--config.{dotted}")
        elif isinstance(current, float) and isinstance(value, int):
            value = float(value)
        elif isinstance(current, str) and not isinstance(value, str):
            value = raw
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        _check_choice(dotted, value)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"--config.{dotted}={raw}: {e}") from None
    return config


def check_known(section: ml_collections.ConfigDict | dict, allowed: Sequence[str], where: str) -> None:
    """Refuses fields of a config section that the consumer does not know (e.g. a misspelt model option)."""
    unknown = sorted(set(section.keys()) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} in config.{where}; allowed: {sorted(allowed)}")


def to_dict(config: ml_collections.ConfigDict | dict) -> dict:
    """Plain nested dict (tuples as lists) for JSON."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def write_json(config: ml_collections.ConfigDict, path: str) -> None:
    """Writes the resolved config as `config.json` (what a run actually used, overrides included)."""
    from etils import epath  # the path may be a gs:// URL (mmjax.paths)

    epath.Path(path).write_text(json.dumps(to_dict(config), indent=2, sort_keys=True))
