"""The console's collector policy (pipelines/startup.py) and the modules each command imports at start-up."""

import argparse
import gc
import importlib.util

import pytest

from pipelines import startup
from pipelines.cli.commands import COMMANDS, engine_modules


@pytest.fixture
def collector():
    """Leave the test process's collector as it was (enabled, nothing frozen by the test)."""
    yield
    startup._paused = False
    gc.unfreeze()
    gc.enable()


def test_pause_then_resume_freezes_what_exists_and_collects_again(collector):
    startup.pause()
    assert not gc.isenabled()
    before = gc.get_freeze_count()
    keep = [object() for _ in range(10)]  # noqa: F841  (alive at resume: frozen)
    startup.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() > before


def test_resume_does_nothing_unless_pause_paused_the_collector(collector):
    startup.resume()  # a program calling main() itself: its collector untouched
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()  # someone else's choice
    startup.pause()
    startup.resume()
    assert not gc.isenabled()  # not ours to enable


@pytest.mark.parametrize("engine", ["beam", "spark"])
def test_every_command_imports_modules_that_exist(engine):
    args = argparse.Namespace(engine=engine)
    for command in COMMANDS:
        for module in command.imports(args):
            assert importlib.util.find_spec(module) is not None, (command.name, module)


def test_embed_imports_only_its_own_engine():
    assert "pipelines.embed.spark" in engine_modules(argparse.Namespace(engine="spark"))
    assert not any("beam" in m for m in engine_modules(argparse.Namespace(engine="spark")))
    assert "pipelines.embed.beam" in engine_modules(argparse.Namespace(engine="beam"))
