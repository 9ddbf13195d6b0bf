"""OpenMP defaults: set before torch or faiss load, never over a value the user gave."""

from __future__ import annotations

import os
import subprocess
import sys

from encoders import openmp


def test_defaults_fill_only_what_is_unset():
    env: dict[str, str] = {}
    assert openmp.apply_defaults(env) == {"GOMP_SPINCOUNT": "10000"} == env
    assert openmp.wait_policy(env) == "GOMP_SPINCOUNT=10000" == openmp.wait_policy({})
    for mine in ({"OMP_WAIT_POLICY": "passive"}, {"GOMP_SPINCOUNT": "0"}):  # either one: the user's choice
        before = dict(mine)
        assert openmp.apply_defaults(mine) == {} and mine == before
    assert openmp.wait_policy({"OMP_WAIT_POLICY": "passive"}) == "PASSIVE"
    assert openmp.wait_policy({"GOMP_SPINCOUNT": "0"}) == "GOMP_SPINCOUNT=0"


def test_too_late_once_torch_is_imported(monkeypatch):
    import torch  # noqa: F401  (libgomp has read the environment)

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert openmp.apply_defaults() == {} and "GOMP_SPINCOUNT" not in os.environ


def test_the_cli_module_loads_no_openmp_runtime():
    """`main` sets the defaults first thing: importing the CLI must not load torch or faiss (whose
    libgomp would have read the environment already) nor Beam."""
    code = "import sys, pipelines.cli; print(sorted({'torch', 'faiss', 'apache_beam'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
