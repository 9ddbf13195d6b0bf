"""An option declared once: a settings dataclass field whose metadata carries its flag, help and checks.

    batch_size: int = option(32, at_least=1, help="items per forward pass")

is the whole declaration of `--batch-size`: `pipelines.cli` generates the argparse option from
it (type from the annotation, default from the field, `choices` and `metavar` passed on),
`docs/cli.md` and the README's command list are generated from it, and `check_options(self)`
in `__post_init__` runs the declared checks with the flag in the message. The flag is
`--` + the field name with dashes unless `flag=` says otherwise. A field without `help` is no
option: code sets it. A nested settings dataclass (a field whose type is one) contributes its
own options; `nested(only=..., skip=...)` picks which.

It lives in the lowest layer (no imports but `encoders.errors`) because settings classes of all
three packages declare options (`TrainConfig` here, `BuildSettings`, `EmbedSettings`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import MISSING, Field, field, fields
from typing import Any

from encoders.errors import SettingsError


def option(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | None = None,
    metavar: str | None = None,
    choices: Collection | None = None,
    at_least: float | None = None,
    dest: str | None = None,
    default_factory: Any = MISSING,
    switches: dict[str, tuple[str, str]] | None = None,
    check: Callable[[str, Any], None] | None = None,
    **metadata: Any,
) -> Any:
    """A dataclass field that is a command-line option. `at_least` and `choices` are checked by
    `check_options` (None values pass); `dest` names the parsed attribute when the field name
    would clash (e.g. Columns' `id` -> `id_column`); `switches` ({flag: (value, help)}) gives a
    set-valued field one flag per member instead of one flag (--freeze-image, --freeze-text);
    `check(flag, value)` is any further check (`above`, `between`), run on values that are not None.
    Other keyword arguments go into the field's metadata (e.g. `run_key=False`)."""
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": choices, "at_least": at_least}
    meta.update(dest=dest, switches=switches, check=check, **metadata)
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def nested(
    default: Any = MISSING,
    *,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    default_factory: Any = MISSING,
    kw_only: bool = False,
    **metadata: Any,
) -> Any:
    """A field holding another settings dataclass whose options this command takes: all of them,
    those named in `only`, or all but those in `skip` (e.g. paths the command sets itself).
    `kw_only`: a required field that may follow fields with defaults (its options come after theirs)."""
    meta = {"only": only, "skip": skip, **metadata}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta, kw_only=kw_only)


def is_option(f: Field) -> bool:
    """Whether the field is a command-line option (declared with `option`)."""
    return "help" in f.metadata


def flag(f: Field) -> str:
    """The field's flag: its declared one, else `--` + the name with dashes."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def flag_of(cls_or_obj: Any, name: str) -> str:
    """The flag of option field `name` of a settings class (or instance), for messages; a name
    that is no option of it is a bug (ValueError)."""
    found = [f for f in fields(cls_or_obj) if f.name == name and is_option(f)]
    if not found:
        raise ValueError(f"{name!r} is no option of {getattr(cls_or_obj, '__name__', type(cls_or_obj).__name__)}")
    return flag(found[0])


def check_options(obj: Any) -> None:
    """Run the declared checks of `obj`'s options (choices, at_least, check), in field order; raise
    SettingsError naming the flag of the first that fails."""
    for f in fields(obj):
        if not is_option(f):
            continue
        value = getattr(obj, f.name)
        if f.metadata.get("choices") is not None and value is not None:
            check_choice(flag(f), value, f.metadata["choices"])
        if f.metadata.get("at_least") is not None:
            check_at_least(flag(f), value, f.metadata["at_least"])
        if f.metadata.get("check") is not None and value is not None:
            f.metadata["check"](flag(f), value)


def check_choice(flag: str, value: object, choices: Collection) -> None:
    """Raise SettingsError unless `value` is one of `choices`."""
    if value not in choices:
        raise SettingsError(f"{flag} must be one of {', '.join(map(str, choices))} (got {value!r})")


def check_at_least(flag: str, value: float | None, minimum: float) -> None:
    """Raise SettingsError when `value` is set and below `minimum`."""
    if value is not None and value < minimum:
        raise SettingsError(f"{flag} must be >= {minimum} (got {value})")


def above(minimum: float) -> Callable[[str, float], None]:
    """A `check`: the value must be > `minimum`."""

    def check(flag: str, value: float) -> None:
        if not value > minimum:
            raise SettingsError(f"{flag} must be > {minimum:g} (got {value})")

    return check


def between(low: float, high: float) -> Callable[[str, float], None]:
    """A `check`: low <= value <= high."""

    def check(flag: str, value: float) -> None:
        if not low <= value <= high:
            raise SettingsError(f"{flag} must be between {low:g} and {high:g} (got {value})")

    return check
