"""Each option declared once: the parser, the checks' messages and the docs all come from the settings fields."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from encoders.errors import SettingsError
from encoders.options import flag, flag_of, is_option
from encoders.settings import RandomClipSettings, TrainConfig
from index_builder.duplicates_settings import DuplicatesSettings
from index_builder.settings import BuildSettings, EvaluateIndexSettings
from pipelines.cli import build_parser, main, settings_from
from pipelines.cli.commands import COMMANDS
from pipelines.cli.docs import CLI_MD, README, cli_markdown, command_list, readme_with_commands
from pipelines.cli.options import option_fields
from pipelines.datasets.sample import make_sample
from pipelines.datasets.settings import CatalogueSettings, SampleSettings
from pipelines.embed.settings import EmbedSettings
from pipelines.inputs import Columns
from pipelines.reindex.settings import ReindexSettings
from pipelines.search.settings import ReportSettings, SearchSettings
from pipelines.training.settings import EvaluateSettings, FinetuneSettings

EMBED = dict(inputs=("a",), output="o", model="m")
BUILD = dict(embeddings="e", output="i")
# The least each settings class needs to be valid: every command's class must be here.
VALID = {
    EmbedSettings: EMBED,
    BuildSettings: BUILD,
    ReindexSettings: dict(root="r", embed=EmbedSettings(**EMBED), build=BuildSettings(**BUILD)),
    SearchSettings: dict(index="i", text="t"),
    FinetuneSettings: dict(train=("a",), val=("b",), output="o"),
    EvaluateSettings: dict(model="m", data=("d",)),
    EvaluateIndexSettings: dict(index="i"),
    DuplicatesSettings: dict(index="i"),
    ReportSettings: dict(index="i", output="o.html"),
    CatalogueSettings: dict(output="o"),
    SampleSettings: dict(output="o"),
    RandomClipSettings: dict(output="o"),
    TrainConfig: {},
    Columns: {},
}
# The flags a command cannot run without, to parse it with nothing else.
REQUIRED = {
    "embed": ["--input", "a", "--output", "o", "--model", "m"],
    "build-index": ["--embeddings", "e", "--output", "i"],
    "reindex": [],
    "search": ["--index", "i", "--text", "t"],
    "finetune": ["--train", "a", "--val", "b", "--output", "o"],
    "evaluate": ["--model", "m", "--data", "d"],
    "evaluate-index": ["--index", "i"],
    "duplicates": ["--index", "i"],
    "report": ["--index", "i", "--output", "o.html"],
    "make-catalogue": ["--output", "o"],
    "make-sample": ["--output", "o"],
    "make-random-clip": ["--output", "o"],
}


def actions(command: str) -> dict:
    return {o: a for a in build_parser().commands[command]._actions for o in a.option_strings}


@pytest.mark.parametrize("c", COMMANDS, ids=lambda c: c.name)
def test_the_parser_carries_each_fields_flag_default_help_and_choices(c):
    by_flag = actions(c.name)
    declared = list(option_fields(c.settings))
    assert declared, c.name
    for f, _, default in declared:
        for switch, (_, text) in (f.metadata.get("switches") or {}).items():
            assert by_flag[switch].help == text and by_flag[switch].dest == (f.metadata.get("dest") or f.name)
        if f.metadata.get("switches"):
            continue
        a = by_flag[flag(f)]
        assert a.help.startswith(f.metadata["help"]), flag(f)
        if default is MISSING:
            assert a.required == c.required_flags, flag(f)
        elif isinstance(default, tuple):
            assert a.default is None and a.nargs == "+", flag(f)  # the settings normalise None
        else:
            assert a.default == default, flag(f)
            assert ("(default: %(default)s)" in a.help) == (default is not None and default is not False), flag(f)
        if f.metadata.get("choices") is not None:
            assert tuple(a.choices) == tuple(f.metadata["choices"]), flag(f)
    # nothing on the parser but the declared options (and -h)
    flags = {flag(f) for f, _, _ in declared if not f.metadata.get("switches")}
    flags |= {s for f, _, _ in declared for s in f.metadata.get("switches") or {}}
    assert set(by_flag) - {"-h", "--help"} == flags


@pytest.mark.parametrize("c", [c for c in COMMANDS if c.name != "reindex"], ids=lambda c: c.name)
def test_flags_left_out_give_the_settings_classes_own_defaults(c):
    args = build_parser().parse_args([c.name, *REQUIRED[c.name]])
    assert settings_from(c.settings, args) == c.settings(**VALID[c.settings])


def test_every_command_has_a_settings_class_covered_here():
    assert {c.settings for c in COMMANDS} <= set(VALID)
    assert set(REQUIRED) == {c.name for c in COMMANDS}


def _checked(cls):
    for f in fields(cls):
        if not is_option(f):
            continue
        if f.metadata.get("at_least") is not None:
            yield f, f.metadata["at_least"] - 1
        if f.metadata.get("choices") is not None:
            yield f, "no-such-choice"
        if f.metadata.get("check") is not None:
            yield f, -1e9  # below every bound declared with above() / between()


CHECKED = [(cls, f, bad) for cls in VALID for f, bad in _checked(cls)]


@pytest.mark.parametrize("cls,f,bad", CHECKED, ids=[f"{c.__name__}.{f.name}" for c, f, _ in CHECKED])
def test_a_declared_check_fails_with_the_flag_in_the_message(cls, f, bad):
    with pytest.raises(SettingsError, match=f"^{flag(f)} must be "):
        cls(**{**VALID[cls], f.name: bad})


def test_hand_written_checks_name_flags_through_the_declarations():
    """__post_init__ quotes no flag literally: it asks flag_of, which knows only declared options,
    so a renamed flag cannot leave a message naming the old one."""
    for cls in VALID:
        src = inspect.getsource(cls.__post_init__) if "__post_init__" in vars(cls) else ""
        assert '"--' not in src and "'--" not in src, cls.__name__
    assert flag_of(BuildSettings, "max_bytes_per_vector") == "--max-bytes-per-vector"
    assert flag_of(EmbedSettings, "inputs") == "--input" and flag_of(Columns, "id") == "--id-column"
    with pytest.raises(ValueError, match="'cache_bytes' is no option of BuildSettings"):
        flag_of(BuildSettings, "cache_bytes")  # a field code sets, not a flag


def test_a_bad_value_on_the_command_line_is_one_line_naming_the_flag(tmp_path, capsys):
    assert main(["make-sample", "--output", str(tmp_path), "--rows", "0"]) == 2
    assert capsys.readouterr().err == "fusionindex: error: --rows must be >= 1 (got 0)\n"
    assert main(["evaluate-index", "--index", str(tmp_path), "--queries", "0"]) == 2
    assert "--queries must be >= 1 (got 0)" in capsys.readouterr().err


def test_the_library_takes_its_defaults_from_the_settings():
    """make-sample's default rows are the CLI's 1200 (the library said 120 before)."""
    params = inspect.signature(make_sample).parameters
    assert params["rows"].default == SampleSettings.rows == 1200
    assert params["shards"].default == SampleSettings.shards


def test_docs_cli_md_is_generated_from_the_declarations():
    assert CLI_MD.read_text() == cli_markdown(), "docs/cli.md is stale: run `make docs`"
    text = cli_markdown()
    for c in COMMANDS:
        assert f"## `fusionindex {c.name}`" in text
        for f, _, _ in option_fields(c.settings):
            assert f"`{flag(f)}`" in text or f.metadata.get("switches")


def test_the_readme_lists_every_command_as_generated():
    readme = README.read_text()
    assert readme_with_commands(readme) == readme, "README.md's command list is stale: run `make docs`"
    assert len(command_list()) == len(COMMANDS) + 2


def test_reindex_run_record_keeps_its_settings_and_key_order():
    s = ReindexSettings(**VALID[ReindexSettings], config="nightly.toml")
    d = s.as_dict()
    assert list(d)[:3] == ["root", "embed", "build"] and "config" not in d
    assert d == dataclasses.replace(s, config=None).as_dict()


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
PRODUCT = ("pipelines", "encoders", "index_builder")
# Quoted in messages but no option of ours: Beam's (beam.py checks them), the docs tool's own.
NOT_OURS = {"--runner", "--experiments", "--check"}
# Named by a message before its option exists: the owner adds the option, then removes it here.
PENDING: dict[str, str] = {}  # flag -> where a message names it before its option exists


def _quoted_flags(path: Path) -> set[str]:
    """Flags quoted in the module's string literals, docstrings left out (they draw diagrams)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        m
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        for m in FLAG.findall(node.value)
        if "_" not in m  # Beam's options are spelt with underscores (--direct_num_workers)
    }


def test_every_flag_a_message_names_is_an_option():
    """A message that tells the user to pass a flag names one the parser has (a renamed or dropped
    option would otherwise leave advice that fails)."""
    parser = build_parser()
    ours = {o for a in parser._actions for o in a.option_strings}
    ours |= {o for p in parser.commands.values() for a in p._actions for o in a.option_strings}
    root = Path(__file__).resolve().parents[2]
    quoted = {f: str(p.relative_to(root)) for d in PRODUCT for p in (root / d).rglob("*.py") for f in _quoted_flags(p)}
    strangers = {f: where for f, where in quoted.items() if f not in ours | NOT_OURS | set(PENDING)}
    assert not strangers, strangers
    assert not set(PENDING) & ours, "an option in PENDING exists now: remove it from PENDING"


def test_a_list_flag_replaces_its_default_once_then_adds_to_it():
    """A --config file's list becomes the parser's default: the command line's flag replaces it, and
    repeating the flag adds to what the command line gave (argparse's "extend" added to the default)."""
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["reindex"]
    sub.set_defaults(carry_columns=["url", "price"])
    base = ["reindex", "--input", "in", "--root", "r", "--model", "m"]
    assert p.parse_args(base).carry_columns == ["url", "price"]
    assert p.parse_args([*base, "--carry-columns", "title"]).carry_columns == ["title"]
    both = p.parse_args([*base, "--carry-columns", "title", "--carry-columns", "sku"])
    assert both.carry_columns == ["title", "sku"]
