"""The output directory of one embed run: the run key that decides what a re-run may reuse.

`DIR/.run.json` holds the key of the run building DIR: the input files (size and change
marker), row groups, resolved columns, model fingerprint, fusion and every setting that
changes the output's bytes (`EmbedSettings.keyed`). A re-run with an equal key reuses the
committed shards (each also checked against the worker's Runtime, see shards.py); any other
key clears the directory first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from encoders import storage
from encoders.errors import InputError
from index_builder.embeddings import EMBEDDINGS, MANIFEST, REJECTS
from pipelines.embed.settings import EmbedSettings
from pipelines.inputs import InputPlan

log = logging.getLogger(__name__)

RUN_FILE = ".run.json"
KEY_VERSION = 2


def run_key(settings: EmbedSettings, plan: InputPlan, model_fingerprint: str, fusion_params: dict) -> dict:
    """Everything that decides the output's bytes: equal keys mean committed shards can be reused."""
    columns = {u.path: asdict(u.columns) for u in plan.units}
    key = {
        "format_version": KEY_VERSION,
        "inputs": {path: storage.version(path) for path in plan.files},
        "units": [(u.path, u.row_group, u.num_rows) for u in plan.units],
        "columns": columns,
        "model_fingerprint": model_fingerprint,
        "fusion": fusion_params,
        "settings": settings.keyed(),
    }
    return json.loads(json.dumps(key))  # the form it takes in .run.json (tuples become lists)


def prepare_output(output: str, key: dict, restart: bool, companions: tuple[str, ...] = ()) -> bool:
    """Get `output` ready; return True when an interrupted identical run's shards can be reused.

    The manifest goes first, so no reader takes the directory as complete while we work.
    A directory holding anything but a fusionindex run (and the `companions` a caller keeps
    beside it, such as a nightly run's index/ and run.json) is refused.
    """
    names = storage.listdir(output)
    ours = (MANIFEST, EMBEDDINGS, REJECTS, *companions)
    foreign = [n for n in names if not n.startswith(".") and n not in ours]
    if foreign:
        raise InputError(
            f"--output {output} already holds files that are not a fusionindex run ({', '.join(foreign[:5])}); "
            "choose a new or empty directory"
        )
    run_path = storage.join(output, RUN_FILE)
    same = not restart and storage.exists(run_path) and storage.read_json(run_path) == key
    storage.remove(storage.join(output, MANIFEST))
    for sub in ("", EMBEDDINGS, REJECTS):  # one run per output directory at a time
        storage.remove_temporaries(storage.join(output, sub) if sub else output)
    if not same:
        if EMBEDDINGS in names or REJECTS in names:
            log.info("clearing the previous run in %s", output)
        for name in (EMBEDDINGS, REJECTS):
            storage.remove(storage.join(output, name), recursive=True)
        storage.makedirs(storage.join(output, EMBEDDINGS))
        storage.write_json(run_path, key)
    return same
