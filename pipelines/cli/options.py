"""Option generation: each command's argparse options, generated from its settings class's fields.

A field declared with `encoders.options.option` is one option: flag, help, metavar and choices
from its metadata, the type from its annotation (`int`, `float`, `str`, `X | None` as X, `bool`
a switch, `tuple[str, ...]` one or more values, repeatable), the default from the field (or from
the enclosing default instance for a nested settings class, e.g. `LABELLED` columns). Nested
settings fields (`encoders.options.nested`) contribute their options in place. `settings_from`
builds the settings object back from the parsed flags. To add an option, add a field.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, Field, fields, is_dataclass, replace
from typing import Any

from encoders.options import flag, is_option


class Parser(argparse.ArgumentParser):
    """argparse, with errors as one line (no usage block) and no abbreviated flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class ExtendOnce(argparse.Action):
    """`nargs="+"`, repeatable: the flag's first use replaces the default (a --config file's list
    among them), later uses add to it. argparse's own "extend" would add to the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_extended", set())
        items = list(getattr(namespace, self.dest) or []) if self.dest in seen else []
        seen.add(self.dest)
        setattr(namespace, self.dest, items + list(values))


def dest(f: Field) -> str:
    """The attribute of the parsed namespace that holds field `f`."""
    return f.metadata.get("dest") or f.name


def field_default(f: Field, parent: Any = None) -> Any:
    """The field's default: the parent default instance's value when there is one, else the
    field's own; MISSING for a required field."""
    if parent is not None:
        return getattr(parent, f.name)
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def value_type(annotation: Any) -> Any:
    """`X | None` -> X; other annotations as they are."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def shows_default(default: Any) -> bool:
    """Whether the help states the default (not for switches off, nothing, or empty lists)."""
    return not (default is MISSING or default is None or default is False or default in ((), frozenset()))


def argument(f: Field, annotation: Any, default: Any, required: bool) -> dict:
    """The keyword arguments of `add_argument` for option field `f`."""
    kind = value_type(annotation)
    help_text = f.metadata["help"] + (" (default: %(default)s)" if shows_default(default) else "")
    kw: dict = {"dest": dest(f), "help": help_text}
    if f.metadata.get("metavar"):
        kw["metavar"] = f.metadata["metavar"]
    if kind is bool:
        return {**kw, "action": "store_true"}
    if default is MISSING:
        kw["required"] = required
    else:
        kw["default"] = None if typing.get_origin(kind) is tuple else default
    if typing.get_origin(kind) is tuple:
        return {**kw, "nargs": "+", "action": ExtendOnce}
    if f.metadata.get("choices") is not None:
        kw["choices"] = tuple(f.metadata["choices"])
    if kind in (int, float):
        kw["type"] = kind
    return kw


def option_fields(cls: type, parent: Any = None, only=None, skip=()) -> typing.Iterator[tuple[Field, Any, Any]]:
    """(field, annotation, default) of every option of `cls`, nested settings expanded in place."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        if is_dataclass(hints[f.name]):
            sub = field_default(f, parent)
            sub = None if sub is MISSING else sub
            yield from option_fields(hints[f.name], sub, f.metadata.get("only"), f.metadata.get("skip", ()))
        elif is_option(f):
            yield f, hints[f.name], field_default(f, parent)


def add_options(p: argparse.ArgumentParser, cls: type, *, required: bool = True) -> None:
    """Add the options of settings class `cls` to `p`; `required=False` leaves required options
    to be checked later (reindex: they may come from --config)."""
    for f, annotation, default in option_fields(cls):
        switches = f.metadata.get("switches")
        if switches:
            for switch, (const, text) in switches.items():
                p.add_argument(switch, dest=dest(f), action="append_const", const=const, help=text)
            continue
        p.add_argument(flag(f), **argument(f, annotation, default, required))


def settings_from(cls: type, ns: argparse.Namespace, base: Any = None):
    """An instance of the settings dataclass `cls` from parsed flags: each option field from the
    attribute of its dest; nested settings from the same flags (starting from the field's default
    instance, e.g. LABELLED columns); fields without a flag keep their defaults. Validation is
    the class's own."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            sub = field_default(f, base)
            kwargs[f.name] = settings_from(hints[f.name], ns, None if sub is MISSING else sub)
        elif hasattr(ns, dest(f)):
            kwargs[f.name] = getattr(ns, dest(f))
    return cls(**kwargs) if base is None else replace(base, **kwargs)
