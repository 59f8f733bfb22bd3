"""Command-line options generated from config dataclasses: defaults and help written once.

A config field declared with :func:`option` carries its flag, help text and argparse details
in the field's metadata; :func:`add_options` adds those flags to a parser (in field order) and
:func:`config_from_args` builds the dataclass back from the parsed namespace. A field
without :func:`option` (a plain default) is not on the command line. The parsed value of an
option goes through its ``parse`` function (e.g. ``"0,6,12"`` -> ``[0, 6, 12]``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

_META = "cli"


def option(default: Any, help: str, flag: str | None = None, *, type: Callable | None = None,  # noqa: A002
           choices: Iterable | None = None, parse: Callable[[Any], Any] | None = None,
           group: str | None = None, default_factory: Callable | None = None, **argparse_kw: Any):
    """A dataclass field that is also a CLI option.

    Args:
        default: the field's default (also the flag's; a ``bool`` False default makes a
            ``store_true`` switch).
        help: the ``--help`` text.
        flag: the option string (default ``--<field-name-with-dashes>``).
        type: argparse type of the raw value (default str).
        choices: allowed raw values.
        parse: maps the raw value (after argparse) to the field's value.
        group: options with the same group name are mutually exclusive.
        default_factory: instead of ``default`` for mutable defaults.
        argparse_kw: more ``add_argument`` keywords (``metavar`` ...).
    """
    meta = {_META: {"help": help, "flag": flag, "type": type, "parse": parse, "group": group,
                    "kw": argparse_kw, "choices": None if choices is None else list(choices)}}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of dataclass ``cls`` that are CLI options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if _META in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata[_META]["flag"] or "--" + f.name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls, skip: Iterable[str] = (),
                after: dict[str, list[tuple[str, dict]]] | None = None) -> dict[str, Any]:
    """Add every option of dataclass ``cls`` (except the field names in ``skip``) to ``parser``.

    ``after``: extra ``(flag, add_argument keywords)`` added right after a field's option (e.g.
    ``--all`` storing None into ``limit``). Returns the argparse actions by field name.
    """
    skip = set(skip)
    groups: dict[str, Any] = {}
    actions: dict[str, Any] = {}
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        m = f.metadata[_META]
        target = parser
        if m["group"]:
            if m["group"] not in groups:
                groups[m["group"]] = parser.add_mutually_exclusive_group()
            target = groups[m["group"]]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw: dict[str, Any] = dict(m["kw"], dest=f.name, help=m["help"])
        if isinstance(default, bool) and default is False and m["type"] is None:
            kw["action"] = "store_true"
        else:
            kw["default"] = default
            if m["type"] is not None:
                kw["type"] = m["type"]
            if m["choices"] is not None:
                kw["choices"] = m["choices"]
            elif "metavar" not in kw:  # named after the flag, not the field
                kw["metavar"] = flag_of(f).lstrip("-").replace("-", "_").upper()
        actions[f.name] = target.add_argument(flag_of(f), **kw)
        for flag, extra in (after or {}).get(f.name, []):
            parser.add_argument(flag, **extra)
    return actions


def config_from_args(cls, args: argparse.Namespace, **overrides: Any):
    """``cls(**fields)`` from the parsed options (through each ``parse``), then ``overrides``."""
    values: dict[str, Any] = {}
    for f in cli_fields(cls):
        if not hasattr(args, f.name):
            continue
        v = getattr(args, f.name)
        parse = f.metadata[_META]["parse"]
        values[f.name] = parse(v) if parse is not None and v is not None else v
    values.update(overrides)
    return cls(**values)
