"""Settings of `p2p-node run`: command-line flags over environment over a TOML file over defaults.

The flags themselves (names, types, defaults, help) are declared once, on the `run` parser in
`p2p_node.cli`; this module only reads the other two sources and merges them by those
declarations, so a new flag is configurable by file and environment with no change here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the 3.10 back-port has the same API
    import tomli as tomllib

#: `P2P_NODE_COLLECT_TIMEOUT=5` sets `--collect-timeout 5`.
ENV_PREFIX = "P2P_NODE_"
#: Read from the data directory when `--config` is not given.
DEFAULT_CONFIG_FILE = "config.toml"


class ConfigError(ValueError):
    """A config file or environment variable that cannot be used; the text says which and why."""


@dataclass(frozen=True)
class Option:
    """One setting of `run`: its flag name, how to read a string, and whether it repeats."""

    name: str  # the flag without dashes, with underscores: "collect_timeout"
    parse: Callable[[str], Any]
    repeated: bool
    default: Any
    choices: Collection[Any] | None = None
    help: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def check(self, value: Any, source: str) -> Any:
        """The value converted to the flag's type; ConfigError naming `source` if it can't be."""
        if self.repeated:
            items = value if isinstance(value, list) else [value]
            return [self._one(v, source) for v in items]
        if isinstance(value, list):
            raise ConfigError(f"{source}: {self.flag} takes one value, not a list")
        return self._one(value, source)

    def _one(self, value: Any, source: str) -> Any:
        if isinstance(value, bool) or isinstance(value, (dict, list)):
            raise ConfigError(f"{source}: {self.flag} cannot be {value!r}")
        try:
            converted = self.parse(str(value))
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: bad value {value!r} for {self.flag}") from None
        if self.choices is not None and converted not in self.choices:
            raise ConfigError(f"{source}: {self.flag} must be one of "
                              f"{', '.join(map(str, self.choices))}, not {value!r}")
        return converted


def read_config_file(path: Path, options: Mapping[str, Option]) -> dict[str, Any]:
    """Settings from a TOML file whose keys are flag names (`collect-timeout = 5`)."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in options:
            raise ConfigError(f"config file {path}: unknown setting {key!r} "
                              f"(settings are the flags of `p2p-node run`)")
        values[name] = options[name].check(value, f"config file {path}")
    return values


def read_environment(environ: Mapping[str, str],
                     options: Mapping[str, Option]) -> dict[str, Any]:
    """Settings from `P2P_NODE_*` variables; a repeated flag takes a comma-separated list."""
    values = {}
    for name, option in options.items():
        raw = environ.get(option.env)
        if raw is None or raw == "":
            continue
        value: Any = [s.strip() for s in raw.split(",") if s.strip()] if option.repeated else raw
        values[name] = option.check(value, f"environment {option.env}")
    return values


def resolve(flags: Mapping[str, Any], options: Mapping[str, Option], config_file: Path | None,
            environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Each option's value from the first source that sets it: flags, environment, file,
    default. `flags` holds None for every flag not given on the command line."""
    from_file = read_config_file(config_file, options) if config_file else {}
    from_env = read_environment(environ, options)
    merged = {}
    for name, option in options.items():
        for source in (flags, from_env, from_file):
            if source.get(name) is not None:
                merged[name] = source[name]
                break
        else:
            merged[name] = option.default
    return merged


def config_template(options: Mapping[str, Option]) -> str:
    """A commented config file listing every setting with its default (written by `init`)."""
    lines = ["# Settings of `p2p-node run` for this data directory. Flags on the command line",
             f"# override the environment ({ENV_PREFIX}NAME, lists comma-separated), which",
             "# overrides this file. Uncomment a line to set it.", ""]
    for option in options.values():
        key = option.name.replace("_", "-")
        lines.append(f"# {option.help}" if option.help else f"# {key}")
        if option.default is None:
            lines.append(f"# {key} =            (not set by default)")
        else:
            lines.append(f"# {key} = {_toml_value(option.default, option.repeated)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any, repeated: bool) -> str:
    if repeated:
        return "[" + ", ".join(_toml_value(v, False) for v in (value or [])) + "]"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
