"""`p2p-node run`'s settings are declared once, on NodeConfig: every field (but the data
directory) is a flag, a config.toml key and a P2P_NODE_* variable, each reaching that field,
with one default that `--help`, the `init` template and an unset setting all agree on.

In-process and fast: the parser and the merge are called directly (tests/test_cli.py runs the
real command)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from p2p_node.cli import RUN_OPTIONS, _run_config, build_parser
from p2p_node.config import ENV_PREFIX, NodeConfig, Option, config_template

#: flag only: the config file is found in it
FLAG_ONLY = {"data_dir"}


def sample(option: Option) -> tuple[str, Any]:
    """A text the option accepts, and the value it parses to, other than the default."""
    for text in [*(option.choices or ()), "on", "7"]:
        try:
            value = option.parse(text)
        except ValueError:
            continue
        if option.choices is not None and value not in option.choices:
            continue
        if (option.repeated and [value] != option.default) or \
                (not option.repeated and value != option.default):
            return text, [value] if option.repeated else value
    raise AssertionError(f"no sample value for {option.flag}")


def toml_line(option: Option, text: str) -> str:
    value = option.parse(text)
    literal = text if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else f'"{text}"'
    return f"{option.key} = {'[' + literal + ']' if option.repeated else literal}\n"


def config_from(tmp_path: Path, argv: list[str]) -> NodeConfig:
    args = build_parser().parse_args(["run", "--data-dir", str(tmp_path), *argv])
    return _run_config(args)


@pytest.fixture(autouse=True)
def no_settings_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)


def test_every_field_is_a_setting_and_every_setting_a_field() -> None:
    fields = {f.name for f in dataclasses.fields(NodeConfig)}
    assert set(RUN_OPTIONS) == fields - FLAG_ONLY
    assert all(option.dest == name for name, option in RUN_OPTIONS.items())
    for attribute in ("flag", "key", "env"):
        names = [getattr(option, attribute) for option in RUN_OPTIONS.values()]
        assert len(set(names)) == len(names), attribute


@pytest.mark.parametrize("name", sorted(RUN_OPTIONS))
def test_each_setting_reaches_its_field_from_flag_file_and_environment(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    option = RUN_OPTIONS[name]
    text, expected = sample(option)
    assert getattr(config_from(tmp_path, [option.flag, text]), name) == expected
    (tmp_path / "config.toml").write_text(toml_line(option, text))
    assert getattr(config_from(tmp_path, []), name) == expected
    (tmp_path / "config.toml").unlink()
    monkeypatch.setenv(option.env, text)
    assert getattr(config_from(tmp_path, []), name) == expected


def test_one_default_for_node_config_flags_file_help_and_template(tmp_path: Path) -> None:
    # Nothing set anywhere: the merged settings are NodeConfig's own defaults.
    assert config_from(tmp_path, []) == NodeConfig(data_dir=tmp_path)
    (tmp_path / "config.toml").write_text(config_template(RUN_OPTIONS))  # all commented out
    assert config_from(tmp_path, []) == NodeConfig(data_dir=tmp_path)
    defaults = NodeConfig(data_dir=tmp_path)
    template = config_template(RUN_OPTIONS)
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    actions = {a.dest: a for a in run._actions}
    for name, option in RUN_OPTIONS.items():
        default = getattr(defaults, name)
        assert option.default == default, name
        help_text = actions[name].help
        assert help_text and option.env in help_text, name
        if default is None:
            assert f"# {option.key} =            (not set by default)" in template, name
        elif default == []:
            assert f"# {option.key} = []" in template, name
        else:
            assert f"(default: {option.shown(default)})" in help_text, name
            assert f"# {option.key} = " in template, name


def test_the_template_written_by_init_parses_back_to_the_defaults(tmp_path: Path) -> None:
    """Uncommenting every line of the template sets each setting to its default."""
    lines = config_template(RUN_OPTIONS).splitlines()
    settings = [line[2:] for line in lines
                if line.startswith("# ") and " = " in line and "not set by default" not in line
                and line[2:].split(" = ")[0] in {o.key for o in RUN_OPTIONS.values()}]
    (tmp_path / "config.toml").write_text("\n".join(settings) + "\n")
    assert config_from(tmp_path, []) == NodeConfig(data_dir=tmp_path)
    assert len(settings) == sum(o.default is not None for o in RUN_OPTIONS.values())


def test_run_help_explains_every_setting(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "p2p_node", "run", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    flat = " ".join(result.stdout.split())
    for option in RUN_OPTIONS.values():
        assert option.flag in flat, option.flag
        words = option.help.split("%(choices)s")[0].split()
        assert " ".join(words) in flat, option.flag  # its help text, as declared


def test_a_flag_beats_the_environment_which_beats_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.toml").write_text("collect-timeout = 5\npropose-timeout = 6\n"
                                          "threads = 3\n")
    monkeypatch.setenv("P2P_NODE_COLLECT_TIMEOUT", "7")
    monkeypatch.setenv("P2P_NODE_PROPOSE_TIMEOUT", "8")
    config = config_from(tmp_path, ["--collect-timeout", "9"])
    assert (config.collect_timeout, config.propose_timeout, config.threads) == (9.0, 8.0, 3)
    assert config.timeouts.collect == 9.0 and config.timeouts.base_view == 9.0 + 8.0 + 10.0


def test_mdns_is_on_or_off_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_from(tmp_path, ["--mdns", "on"]).mdns is True
    assert config_from(tmp_path, ["--mdns", "off"]).mdns is False
    with pytest.raises(SystemExit):
        config_from(tmp_path, ["--mdns", "yes"])
    (tmp_path / "config.toml").write_text('mdns = "maybe"\n')
    with pytest.raises(ValueError, match="--mdns"):
        config_from(tmp_path, [])


def test_lists_are_not_shared_between_configs(tmp_path: Path) -> None:
    first = config_from(tmp_path, [])
    first.listen.append("/ip4/127.0.0.1/tcp/1")
    assert config_from(tmp_path, []).listen == ["/ip4/0.0.0.0/tcp/0"]
    assert NodeConfig(data_dir=tmp_path).bootstrap == []


def test_parser_is_built_from_the_declaration() -> None:
    """No flag of `run` is declared outside NodeConfig but --data-dir, --config and logging."""
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    flags = {f for a in run._actions for f in a.option_strings
             if not isinstance(a, argparse._HelpAction)}
    assert flags - {o.flag for o in RUN_OPTIONS.values()} == {
        "--data-dir", "--config", "--log-level", "--log-json"}


def test_liar_targets_are_the_attack_suites() -> None:
    """`--liar-target` lists learning.attacks.LIAR_TARGETS (copied so the parser needs no
    torch) and reaches the config."""
    from learning.attacks import LIAR_TARGETS
    from p2p_node.config import LIAR_TARGETS as listed

    assert listed == LIAR_TARGETS


def test_a_lying_judge_backs_its_target(tmp_path: Path) -> None:
    from p2p_node.attack_lab import RushingJudge

    assert config_from(tmp_path, []).liar_target == "colluders"
    assert config_from(tmp_path, ["--liar-target", "worst"]).liar_target == "worst"
    with pytest.raises(SystemExit):
        config_from(tmp_path, ["--liar-target", "nobody"])
    assert RushingJudge(frozenset({"a"})).target == "colluders"
