"""The nightly job's TOML config (`reindex --config FILE.toml`): option names as keys, a [beam] table.

Values become the reindex parser's defaults, so flags on the command line override them.
"""

from __future__ import annotations

import argparse
import difflib

from encoders import storage
from encoders.errors import SettingsError


def load_config(p: argparse.ArgumentParser, path: str) -> tuple[dict, list[str]]:
    """(defaults for `p`'s options, Beam arguments) from a TOML file: keys are option names
    (batch-size or batch_size); a [beam] table holds Beam options ({runner = "..."} or a list)."""
    import tomllib

    fs, fp = storage.url_to_fs(path)
    try:
        with fs.open(fp, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"--config {path}: cannot read it as TOML ({exc})") from exc
    beam = data.pop("beam", {})
    actions = {o[2:]: a for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--config"}
    defaults = {}
    for key, value in data.items():
        action = actions.get(key.replace("_", "-"))
        if action is None:
            close = difflib.get_close_matches(key.replace("_", "-"), list(actions), n=1)
            raise SettingsError(
                f"--config {path}: unknown option {key!r}" + (f"; did you mean {close[0]}?" if close else "")
            )
        defaults[action.dest] = _config_value(action, key, value, path)
    if isinstance(beam, dict):
        beam = [f"--{k}" if v is True else f"--{k}={v}" for k, v in beam.items() if v is not False]
    return defaults, [str(a) for a in beam]


def _config_value(action: argparse.Action, key: str, value, path: str):
    """A TOML value as the option's flag would have given it."""
    if action.nargs in ("+", "*"):
        value = [value] if isinstance(value, str) else value
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise SettingsError(f"--config {path}: {key} must be a string or a list of strings")
        return value
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise SettingsError(f"--config {path}: {key} must be true or false")
        return value
    if action.type is not None:
        try:
            return action.type(value)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"--config {path}: {key} = {value!r}: {exc}") from exc
    return value
