"""Search parameters passed per call, never set on a loaded index."""

from __future__ import annotations

import faiss

from encoders.errors import SettingsError


def search_parameters(index: faiss.Index, nprobe: int) -> faiss.SearchParameters:
    """Per-call parameters that probe `nprobe` inverted lists of `index`, through an OPQ/PCA
    pre-transform. SettingsError when the index has no inverted lists."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexShards):  # passed on to every shard: they share one template
        return search_parameters(index.at(0), nprobe)
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(nprobe=nprobe)
    if not isinstance(index, faiss.IndexPreTransform):
        raise SettingsError(f"--nprobe applies to IVF indexes, not to this {type(index).__name__}: leave it out")
    params, inner = faiss.SearchParametersPreTransform(), search_parameters(index.index, nprobe)
    params.index_params = inner
    params.referenced_objects = [inner]  # SWIG holds a raw pointer to `inner`: keep it alive
    return params


def nprobe_ladder(nlist: int) -> list[int]:
    """nprobe values to measure recall at: powers of two from 1 up to nlist (and nlist itself)."""
    values = [1 << i for i in range(nlist.bit_length()) if 1 << i < nlist]
    return values + [nlist]
