"""Experiments as files: `dispatch run|compare|sweep -c experiment.toml`.

An experiment file holds the same options as the command line, by the same
names (`rate = "20k"`, `netisr = 2`, `ithread-prio = true`, `cpu = ["ithread=0"]`),
so a result can be repeated from the file alone. Keys at the top level apply
to every command; a `[run]`, `[compare]` or `[sweep]` table applies only to
that command; `[experiment]` holds free text (name, description) that is
recorded and otherwise ignored. Every value goes through the same parsing
and checks as its command-line form, and an option given explicitly on the
command line overrides the file. Explicit means typed: the command line is
parsed a second time by a copy of the parser whose defaults are all
suppressed, so only the options the user wrote appear in that namespace.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tomllib
from typing import Any

COMMANDS = ("run", "compare", "sweep")
META_TABLE = "experiment"


class ExperimentError(ValueError):
    """A bad experiment file: the message names the file, the key and what is valid."""


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The subparser of `command` in the `dispatch` parser."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices[command]
    raise KeyError(command)


def explicit_dests(build: Any, argv: list[str]) -> set[str]:
    """The option destinations written on the command line (not defaults).

    `build` makes a fresh `dispatch` parser; every default of every
    subcommand is replaced by SUPPRESS, so the namespace holds only what was
    typed.
    """
    parser: argparse.ArgumentParser = build()
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                _suppress(sp)
    ns = parser.parse_args(argv)
    return set(vars(ns)) - {"command"}


def _suppress(p: argparse.ArgumentParser) -> None:
    p._defaults.clear()
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                _suppress(sp)
        elif a.dest != "help":
            a.default = argparse.SUPPRESS


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Settable options of a command by key: dest, with dashes or underscores."""
    out: dict[str, argparse.Action] = {}
    for a in p._actions:
        if a.dest in ("help", "version", "config", "show_config") or isinstance(
                a, argparse._SubParsersAction | argparse._VersionAction):
            continue
        out[a.dest] = a
        out[a.dest.replace("_", "-")] = a
        for s in a.option_strings:
            if s.startswith("--"):
                out[s[2:]] = a
    return out


def load(path: str) -> dict[str, Any]:
    """Read and parse a TOML file; errors name the file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ExperimentError(f"experiment file {path!r} not found") from None
    except OSError as e:
        raise ExperimentError(f"cannot read experiment file {path!r}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ExperimentError(f"experiment file {path!r} is not valid TOML: {e}") from None


def settings_for(data: dict[str, Any], command: str, path: str) -> dict[str, Any]:
    """Top-level keys plus the command's own table (which wins)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k == META_TABLE or k in COMMANDS:
            if not isinstance(v, dict):
                raise ExperimentError(f"{path}: [{k}] must be a table")
            continue
        out[k] = v
    out.update(data.get(command, {}))
    return out


def _convert(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """One value as its command-line form would have parsed it."""
    where = f"{path}: {key} = {value!r}"

    def one(v: Any) -> Any:
        if isinstance(v, bool) or isinstance(v, dict | list):
            raise ExperimentError(f"{where}: expected a single value")
        t = action.type
        if t is None:
            out = v if isinstance(v, str) else str(v)
        elif t in (int, float):
            if isinstance(v, str):
                try:
                    out = t(v)
                except ValueError:
                    raise ExperimentError(f"{where}: expected a number") from None
            elif t is int and isinstance(v, float) and not v.is_integer():
                raise ExperimentError(f"{where}: expected an integer")
            else:
                out = t(v)
        else:
            if isinstance(v, float) and v.is_integer():
                v = int(v)  # 1e6 -> "1000000", as it would be typed
            try:
                out = t(v if isinstance(v, str) else str(v))  # type: ignore[misc]
            except (argparse.ArgumentTypeError, ValueError) as e:
                raise ExperimentError(f"{where}: {e}") from None
        if action.choices is not None and out not in action.choices:
            raise ExperimentError(f"{where}: valid: {', '.join(map(str, action.choices))}")
        return out

    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ExperimentError(f"{where}: expected true or false")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        if isinstance(value, dict):  # e.g. [cpu] ithread = [0]
            items: list[Any] = []
            for k, v in value.items():
                cpus = v if isinstance(v, list) else [v]
                items.append(f"{k}={','.join(str(c) for c in cpus)}")
            value = items
        if not isinstance(value, list):
            value = [value]
        return [one(v) for v in value]
    if isinstance(value, list):  # a list option written as a TOML array: rates, models
        value = ",".join(str(v) for v in value)
    return one(value)


def apply(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str,
          path: str, explicit: set[str]) -> list[str]:
    """Fill `args` from the experiment file where the command line gave nothing.

    Returns the keys taken from the file. Raises ExperimentError for an
    unknown key (listing the valid ones) or a bad value.
    """
    data = load(path)
    settings = settings_for(data, command, path)
    sp = subparser(parser, command)
    opts = _options(sp)
    taken: list[str] = []
    groups = [[a.dest for a in g._group_actions] for g in sp._mutually_exclusive_groups]
    for key, value in settings.items():
        action = opts.get(key)
        if action is None:
            others = [c for c in COMMANDS if c != command
                      and key in _options(subparser(parser, c))]
            if others:
                raise ExperimentError(f"{path}: {key!r} is an option of dispatch "
                                      f"{' and '.join(others)}, not {command}: put it under "
                                      f"[{others[0]}]")
            valid = sorted({a.dest.replace("_", "-") for a in opts.values()})
            raise ExperimentError(f"{path}: unknown key {key!r} for dispatch {command}; "
                                  f"valid: {', '.join(valid)}")
        dest = action.dest
        if dest in explicit:
            continue  # the command line wins
        rivals = [d for g in groups if dest in g for d in g if d != dest]
        if any(r in explicit for r in rivals):
            continue  # e.g. --count typed, duration from the file: the typed one wins
        setattr(args, dest, _convert(action, key, value, path))
        for r in rivals:  # the file's choice replaces the default of its rival
            setattr(args, r, None)
        taken.append(dest)
    return taken


def provenance(path: str, taken: list[str], explicit: set[str]) -> dict[str, Any]:
    """What the result document records about the experiment file."""
    with open(path, "rb") as f:
        raw = f.read()
    meta = tomllib.loads(raw.decode()).get(META_TABLE, {})
    return {"file": os.path.abspath(path), "sha256": hashlib.sha256(raw).hexdigest(),
            "from_file": sorted(taken),
            "given_on_command_line": sorted(explicit - {"config", "show_config"}),
            **({"meta": meta} if meta else {})}
