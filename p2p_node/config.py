"""Settings of `p2p-node run`: command-line flags over environment over a TOML file over defaults.

Every setting is declared once, as a field of `NodeConfig` with its flag, parser and help in the
field's metadata (`setting`). From that one declaration come the `run` flags (p2p_node.cli
`add_run_options`), the config file's keys and the `P2P_NODE_*` variables (`run_options`),
the commented template `init` writes, and the defaults: a new field is a new flag, key and
variable with no change elsewhere.

Light on purpose: the CLI imports this for `--help`, so nothing here imports torch or libp2p.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from bft.byzantine import BEHAVIOURS

#: learning.attacks.LIAR_TARGETS, read here without torch (tests/test_run_options.py checks)
LIAR_TARGETS = ("colluders", "worst")

if TYPE_CHECKING:
    from p2p_node.round_machine import RoundTimeouts

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
    #: the NodeConfig field it sets: `--genesis` sets `genesis_path`
    dest: str = ""
    metavar: str | None = None
    #: how a value is written back as the flag's text (in `--help` and the template), if not
    #: str(): `--mdns` takes on/off for a bool
    show: Callable[[Any], str] | None = None

    @property
    def key(self) -> str:
        """The config file's key: the flag without its dashes (`collect-timeout`)."""
        return self.name.replace("_", "-")

    def shown(self, value: Any) -> str:
        """`value` as an operator writes it on the command line."""
        if self.repeated:
            return ", ".join(self.show(v) if self.show else str(v) for v in value)
        return self.show(value) if self.show else str(value)

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
    by_name = {option.name: name for name, option in options.items()}
    values = {}
    for key, value in raw.items():
        name = by_name.get(key.replace("-", "_"))
        if name is None:
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
    default, keyed as `options` is (by NodeConfig field: `NodeConfig(data_dir, **resolved)`).
    `flags` holds None for every flag not given on the command line."""
    from_file = read_config_file(config_file, options) if config_file else {}
    from_env = read_environment(environ, options)
    merged = {}
    for name, option in options.items():
        for source in (flags, from_env, from_file):
            if source.get(name) is not None:
                merged[name] = source[name]
                break
        else:
            merged[name] = list(option.default) if option.repeated else option.default
    return merged


def config_template(options: Mapping[str, Option]) -> str:
    """A commented config file listing every setting with its default (written by `init`)."""
    lines = ["# Settings of `p2p-node run` for this data directory. Flags on the command line",
             f"# override the environment ({ENV_PREFIX}NAME, lists comma-separated), which",
             "# overrides this file. Uncomment a line to set it.", ""]
    for option in options.values():
        key = option.key
        text = option.help.replace("%(choices)s", "see `p2p-node run --help`")
        lines.append(f"# {text}" if text else f"# {key}")
        if option.default is None:
            lines.append(f"# {key} =            (not set by default)")
        else:
            lines.append(f"# {key} = {_toml_value(option, option.default, option.repeated)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(option: Option, value: Any, repeated: bool) -> str:
    if repeated:
        return "[" + ", ".join(_toml_value(option, v, False) for v in (value or [])) + "]"
    if option.show is not None:
        value = option.show(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


# value parsers (argparse names the type in its error: "invalid positive float value") --------
def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError(text)
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(text)
    return value


non_negative_float.__name__ = "non-negative float"


def port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError(text)
    return value


port.__name__ = "port"


def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(text)
    return text == "on"


on_off.__name__ = "on/off"


def _on_off_text(value: Any) -> str:
    return "on" if value else "off"


class LazyNames(Collection[str]):
    """Choices whose module is heavy (torch): read only when checked or listed in `--help`."""

    def __init__(self, load: Callable[[], list[str]]) -> None:
        self._load = load

    def _names(self) -> list[str]:
        return self._load()

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def attack_names() -> list[str]:
    from learning.attacks import ATTACKS

    return list(ATTACKS)


# the declaration -----------------------------------------------------------------------------
_OPTION = "run_option"


def setting(default: Any, help: str, *, parse: Callable[[str], Any] = str,
            flag: str | None = None, repeated: bool = False,
            choices: Collection[Any] | None = None, metavar: str | None = None,
            show: Callable[[Any], str] | None = None) -> Any:
    """A NodeConfig field that is also a `run` flag, config key and environment variable.

    `flag`: the flag's name with underscores, if not the field's (`genesis` for
    `genesis_path`); `help`: what `--help` and the template say (argparse's `%(choices)s`
    allowed); `parse`: text to value (a ValueError is a bad value)."""
    spec = dict(flag=flag, parse=parse, repeated=repeated, choices=choices, help=help,
                metavar=metavar, show=show)
    if isinstance(default, list):
        items = list(default)
        return field(default_factory=lambda: list(items), metadata={_OPTION: spec})
    return field(default=default, metadata={_OPTION: spec})


@dataclass
class NodeConfig:
    """Everything `p2p-node run` takes. Every field but `data_dir` (a flag only: the config
    file lives there) is declared with `setting`, and so is a flag, a key and a variable."""

    data_dir: Path
    genesis_path: Path | None = setting(
        None, "genesis file (default DATA_DIR/genesis.json)", parse=Path, flag="genesis",
        metavar="FILE")
    listen: list[str] = setting(
        ["/ip4/0.0.0.0/tcp/0"], "multiaddr to listen on (repeatable)", repeated=True,
        metavar="MULTIADDR")
    bootstrap: list[str] = setting(
        [], "multiaddr of a running peer, ending in /p2p/ID (repeatable); the run fails if none "
        "is reachable within --start-wait", repeated=True, metavar="MULTIADDR")
    #: find LAN peers by mDNS (peer exchange and redialling run always: p2p_node/discovery.py)
    mdns: bool = setting(
        False, "find peers on the LAN by mDNS: on or off", parse=on_off, metavar="{on,off}",
        show=_on_off_text)
    attack: str = setting(
        "none", "simulate a malicious peer with this attack: %(choices)s",
        choices=LazyNames(lambda: ["none", *attack_names()]), metavar="ATTACK")
    #: peer IDs colluding with this attacker (colluding attacks: false_scores, alie)
    colluders: list[str] = setting(
        [], "peer ID of a fellow attacker (colluding attacks such as false_scores: a lying "
        "committee member reports its colluders at distance 0; repeatable)", flag="colluder",
        repeated=True, metavar="PEER_ID")
    #: attack lab, judged rounds: what a lying judge backs (learning.attacks.LIAR_TARGETS)
    liar_target: str = setting(
        "colluders", "attack lab, judged rounds: what this attacker's lying votes back, the "
        "candidate holding the most colluders' updates (colluders) or the one the honest "
        "judges like least (worst: plain harm; docs/learning.md, ninth pass)",
        choices=LIAR_TARGETS)
    #: committee misbehaviour for the attack lab (p2p_node/attack_lab.py)
    byzantine: str = setting(
        "none", "misbehaviour beyond the update: equivocate (as leader, propose two blocks), "
        "equivocate_votes (that, and sign a second, conflicting prepare and commit beside each "
        "vote), silent (send no consensus messages) or withhold (as trainer, announce a large "
        "update and serve none of its bytes)", choices=BEHAVIOURS)
    rounds: int | None = setting(
        None, "stop once the chain has this many blocks (default: run until stopped)",
        parse=positive(int))
    shard_index: int | None = setting(
        None, "which data shard is this peer's (default: its position among the sorted genesis "
        "members; a joiner's is picked by its peer id)", parse=int)
    num_shards: int | None = setting(
        None, "shards the data is split into (default: number of genesis members)",
        parse=positive(int))
    collect_timeout: float = setting(
        20.0, "seconds a committee member waits for updates before scoring",
        parse=positive(float))
    propose_timeout: float = setting(
        10.0, "further seconds the leader waits for every score vector", parse=positive(float))
    #: None: collect + propose + 10 s, so an honest leader that waited out both deadlines still
    #: proposes in time
    view_timeout: float | None = setting(
        None, "pBFT view timeout in seconds, doubled on each view change "
        "(default: collect + propose timeouts + 10)", parse=positive(float))
    start_wait: float = setting(
        60.0, "seconds to wait for the other members before the first round",
        parse=non_negative_float)
    #: None: the bootstrap count
    min_peers: int | None = setting(
        None, "peers that must be connected on our topics before the first round (default: the "
        "number of --bootstrap addresses)", parse=int)
    threads: int = setting(1, "torch threads for local training", parse=positive(int))
    #: None: the name the genesis pins
    task: str | None = setting(
        None, "where this peer finds the genesis's task: a built-in name (digits, cnn, credit), "
        "package.module:Class or path/to/task.py (default: the name the genesis pins); refused "
        "unless its hash is the pinned one", metavar="TASK")
    #: None: its shard of the task's bundled data set (the demo's convenience)
    data: Path | None = setting(
        None, "this peer's own data file, CSV or NPZ, read by the task; never shipped (default: "
        "its shard of the task's bundled data set)", parse=Path, metavar="PATH")
    rebroadcast_interval: float = setting(
        3.0, "seconds between repeats of this round's own messages (gossip has no replay for "
        "a peer whose mesh formed late)", parse=positive(float), metavar="SECONDS")
    linger: float = setting(
        5.0, "seconds a peer that reached --rounds keeps serving the last block to late peers "
        "before it exits", parse=non_negative_float, metavar="SECONDS")
    #: read by the CLI, which serves the metrics (p2p_node.metrics), not by the node
    metrics_port: int | None = setting(
        None, "serve Prometheus metrics on this port at /metrics (default: off)", parse=port,
        metavar="PORT")
    metrics_host: str = setting(
        "127.0.0.1", "address the metrics server binds (0.0.0.0 to let another machine scrape "
        "it)", metavar="ADDR")

    @property
    def timeouts(self) -> RoundTimeouts:
        from p2p_node.round_machine import RoundTimeouts

        return RoundTimeouts(self.collect_timeout, self.propose_timeout, self.view_timeout)

    @property
    def genesis_file(self) -> Path:
        return self.genesis_path or self.data_dir / "genesis.json"


def run_options() -> dict[str, Option]:
    """Every setting of `run` (a flag, config key and variable), by NodeConfig field, in the
    declaration's order."""
    options = {}
    for f in dataclasses.fields(NodeConfig):
        spec = f.metadata.get(_OPTION)
        if spec is None:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        metavar = spec["metavar"]
        if metavar is None and spec["parse"] is not str:
            metavar = "SECONDS" if f.name.endswith(("timeout", "wait")) else "N"
        options[f.name] = Option(spec["flag"] or f.name, spec["parse"], spec["repeated"], default,
                                 spec["choices"], spec["help"], f.name, metavar, spec["show"])
    return options
