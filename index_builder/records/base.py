"""`Part` and `Record`: a JSON object as a frozen dataclass, and one that is a file with its own load/save.

A record is the JSON object on disk, field for field and in its order: `to_dict()` gives back the
keys it was read with (a key absent from the file stays absent, keys this code does not know ride
along in `extra`), so reading and writing again loses nothing. `load(directory)` is the one place
that says a record is missing (a usage error naming the command that writes it) and checks its
kind and `format_version`: older versions are read (their missing keys take the defaults), a
newer one is refused with what to do. Writes are atomic (`storage.write_json`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from encoders import storage
from encoders.errors import InputError


def optional(default: Any = None, key: str | None = None) -> Any:
    """A field left out of the JSON while it holds `default` (a key only some records carry)."""
    return field(default=default, metadata={"omit": default, **({"key": key} if key else {})})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _part_type(hint: Any) -> tuple[type | None, bool]:
    """(the Part class a hint names, whether it is a sequence of them) or (None, False)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(hint) if a is not type(None)]
        return _part_type(parts[0]) if len(parts) == 1 else (None, False)
    if origin in (tuple, list):
        inner, _ = _part_type(typing.get_args(hint)[0])
        return inner, inner is not None
    return (hint, False) if isinstance(hint, type) and issubclass(hint, Part) else (None, False)


def _dump(value: Any) -> Any:
    if isinstance(value, Part):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Part:
    """A JSON object as a frozen dataclass: one field per key, in the file's key order. Fields typed
    as a Part (or a tuple of them) are read as such; other values stay as JSON gave them. `extra`:
    keys the class does not know; `absent`: fields the object did not carry (written back only if
    changed from their default)."""

    extra: dict = field(default_factory=dict, kw_only=True, repr=False)
    absent: frozenset = field(default=frozenset(), kw_only=True, repr=False, compare=False)

    @classmethod
    def _fields(cls) -> list[dataclasses.Field]:
        return [f for f in fields(cls) if f.name not in ("extra", "absent")]

    @classmethod
    def from_dict(cls, data: dict) -> Self:
        hints, kwargs, known = _hints(cls), {}, set()
        for f in cls._fields():
            key = f.metadata.get("key", f.name)
            known.add(key)
            if key not in data:
                continue
            value, (part, many) = data[key], _part_type(hints[f.name])
            if part is not None and value is not None:
                value = tuple(part.from_dict(v) for v in value) if many else part.from_dict(value)
            kwargs[f.name] = value
        absent = frozenset(f.name for f in cls._fields() if f.metadata.get("key", f.name) not in data)
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known}, absent=absent)

    def to_dict(self) -> dict:
        """The JSON form: the keys it was read with, or (made here) every field but the optional
        ones at their default."""
        out = {}
        for f in self._fields():
            value = getattr(self, f.name)
            if not self._omits(f, value):
                out[f.metadata.get("key", f.name)] = _dump(value)
        return {**out, **self.extra}

    def _omits(self, f: dataclasses.Field, value: Any) -> bool:
        """Whether to_dict leaves `f` out: an optional field, or one the object was read without,
        while it holds its default."""
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        return (f.name in self.absent or "omit" in f.metadata) and value == default


@dataclass(frozen=True)
class Record(Part):
    """A Part that is a file of its own: FILE in a directory, of KIND at VERSION (OLDEST.. read)."""

    FILE: ClassVar[str]
    KIND: ClassVar[str]  # what the record says it is ("kind"), or what it is called when it does not say
    VERSION: ClassVar[int]
    OLDEST: ClassVar[int] = 1
    WRITTEN_BY: ClassVar[str]  # the fix when it is missing: "the embed run did not finish; run ..."

    @classmethod
    def path(cls, directory: str) -> str:
        return storage.join(directory, cls.FILE)

    @classmethod
    def exists(cls, directory: str) -> bool:
        return storage.exists(cls.path(directory))

    @classmethod
    def load(cls, directory: str) -> Self:
        """The record in `directory`; InputError when there is none, or of another kind or version."""
        record = cls.load_if_any(directory)
        if record is None:
            raise InputError(f"{directory} has no {cls.FILE}: {cls.WRITTEN_BY}")
        return record

    @classmethod
    def load_if_any(cls, directory: str) -> Self | None:
        """The record in `directory`, or None where there is none yet."""
        if not cls.exists(directory):
            return None
        return cls.parse(storage.read_json(cls.path(directory)), cls.path(directory))

    @classmethod
    def parse(cls, data: Any, where: str = "") -> Self:
        """The record from its JSON form, after the kind and version checks."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: not a {cls.KIND} record (a JSON object); {cls.WRITTEN_BY}")
        kind = data.get("kind", cls.KIND)
        if kind != cls.KIND:
            raise InputError(f"{where} is a {kind} record, not a {cls.KIND} one; {cls.WRITTEN_BY}")
        version = data.get("format_version", cls.VERSION)
        if not isinstance(version, int) or version > cls.VERSION:
            raise InputError(
                f"{where} has format_version {version}, newer than this fusionindex reads ({cls.VERSION}): "
                "upgrade fusionindex, or write it again with this one"
            )
        if version < cls.OLDEST:
            raise InputError(
                f"{where} has format_version {version}, older than this fusionindex reads "
                f"({cls.OLDEST}..{cls.VERSION}): write it again; {cls.WRITTEN_BY}"
            )
        return cls.from_dict(data)

    def save(self, directory: str) -> str:
        """Write the record atomically as `directory/FILE`; returns its path."""
        path = self.path(directory)
        storage.write_json(path, self.to_dict())
        return path
