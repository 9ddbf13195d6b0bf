"""OpenMP defaults: set before torch or faiss load, never over a value the user gave."""

from __future__ import annotations

import os
import subprocess
import sys

from encoders import openmp


def test_defaults_fill_only_what_is_unset():
    env: dict[str, str] = {}
    assert openmp.apply_defaults(env) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert openmp.apply_defaults(mine) == {} and mine == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_too_late_once_torch_is_imported(monkeypatch):
    import torch  # noqa: F401  (libgomp has read the environment)

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert openmp.apply_defaults() == {} and "OMP_WAIT_POLICY" not in os.environ


def test_the_cli_module_loads_no_openmp_runtime():
    """`main` sets the defaults first thing: importing the CLI must not load torch or faiss (whose
    libgomp would have read the environment already) nor Beam."""
    code = "import sys, pipelines.cli; print(sorted({'torch', 'faiss', 'apache_beam'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
