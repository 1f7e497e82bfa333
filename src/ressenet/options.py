"""The configuration flags of ``ressenet train`` (and grid/reproduce), generated from the config fields' metadata.

One module that both command-line front ends import (cli.py and experiments/cli.py), so neither imports the other.
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, Field, fields
from typing import Any

from ressenet.engine.config import SECTIONS, ConfigError, field_choices

__all__ = ["TRAIN_FLAGS", "TRAIN_SWITCHES", "add_train_options", "train_overrides"]


def _train_options() -> list[tuple[str, str, Field, bool]]:
    """(flag, "section.key", field, is a --flag/--no-flag switch) for every config field that has a flag, in the
    config's order: generated from the fields' metadata (engine/config.py ``option``), the one source of the flags,
    their help, defaults and choices."""
    out = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            flag = f.metadata.get("flag", "")
            if flag is None:
                continue  # --set only
            switch = hints[f.name] in (bool, bool | None)
            out.append((flag or "--" + f.name.replace("_", "-"), f"{section}.{f.name}", f, switch))
    return out


# Flag -> config key for `ressenet train` (and grid/reproduce, which pass them to every cell), and the boolean
# switches (--flag / --no-flag); both generated from the config fields.
TRAIN_FLAGS: dict[str, str] = {flag: key for flag, key, _, switch in _train_options() if not switch}
TRAIN_SWITCHES: dict[str, str] = {flag[2:]: key for flag, key, _, switch in _train_options() if switch}
_NOT_IN_GRIDS = ("model.name", "run.out", "run.seed")  # grid/reproduce set these per cell


def _default_text(f: Field) -> str:
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    value = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _flag_help(key: str, f: Field, *, in_grid: bool = False) -> str:
    """``--help`` text of a config flag: what it does, its default and config key (a fixed set of choices is the
    metavar: ``--precision {auto,fp32,bf16,fp16}``). In a grid, the preset's value comes first."""
    text = f.metadata["help"]
    if f.metadata.get("applies_to"):  # e.g. the datasets --download fetches: "(cifar10/cifar100)"
        text += f" ({'/'.join(f.metadata['applies_to']())})"
    more = f.metadata.get("choices_text")
    if more and more not in text:  # choices too many to list, e.g. "see `ressenet models`"
        text += f" ({more})"
    default = f"the preset's, else {_default_text(f)}" if in_grid else _default_text(f)
    return f"{text}; default: {default} [{key}]".replace("%", "%%")


def _metavar(key: str, f: Field) -> str:
    if f.metadata.get("metavar"):
        return f.metadata["metavar"]
    choices = None if f.metadata.get("choices_text") else field_choices(f)  # choices_text: too many to show
    if choices is not None:
        return "{" + ",".join(choices) + "}"
    return key.split(".")[1].upper()


def add_train_options(p: argparse.ArgumentParser, *, with_model: bool = True) -> None:
    """The config flags, one per config field (section groups in the config's order), plus --config and --set.

    Values stay strings (dest "section.key", default None: not given); ``load_config`` parses and validates them,
    so a bad name is a one-line error with a did-you-mean rather than argparse's usage dump.
    """
    title = ("configuration of every cell (defaults: the preset's, else the paper's; flags override --config)"
             if not with_model else "configuration (defaults: the paper's protocol; flags override --config)")
    g = p.add_argument_group(title)
    g.add_argument("--config", metavar="YAML", help="YAML file with sections model/data/optim/run, e.g. "
                                                    "'optim: {iters: 500}'; flags and --set override it")
    g.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set optim.gamma=0.2 or --set data.train_limit=512 (repeatable)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, key, f, switch in _train_options():
        if not with_model and key in _NOT_IN_GRIDS:
            continue
        section = key.split(".")[0]
        if section not in groups:
            groups[section] = p.add_argument_group(f"{section} (config section {section}.*)")
        grp = groups[section]
        if switch:
            grp.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None,
                             help=_flag_help(key, f, in_grid=not with_model))
        else:
            grp.add_argument(flag, dest=key, metavar=_metavar(key, f), default=None,
                             help=_flag_help(key, f, in_grid=not with_model))


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides given on the command line, as {"section.key": value}."""
    out = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    for item in getattr(args, "sets", []) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like section.key=value, e.g. --set optim.lr=0.05")
        out[key.strip()] = value.strip()
    return out
