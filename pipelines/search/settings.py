"""What `search` and `report` are asked to do, validated on creation (flag names in the messages)."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.errors import SettingsError
from encoders.options import check_options, flag_of, nested, option
from pipelines.datasets.items import LABELLED
from pipelines.inputs import Columns


@dataclass(frozen=True)
class SearchSettings:
    index: str = option(metavar="IDX", help="an index directory, or a reindex ROOT (its LATEST)")
    text: str | None = option(None, help="the query text")
    image: str | None = option(None, metavar="PATH", help="image file (local or URL)")
    k: int = option(10, at_least=1, help="hits to return")
    nprobe: int | None = option(None, at_least=1, help="inverted lists to visit (default: the index's own)")
    model: str | None = option(None, metavar="SPEC", help="default: the model the embeddings were made with")
    device: str | None = option(None, help="torch device (default: cuda when present, else cpu)")
    json: bool = option(False, help="one JSON object per line: rank, id, score, caption, carried columns")
    collapse_duplicates: bool = option(
        False, help="one result per near-duplicate group (IDX/duplicates.parquet, from `duplicates`)"
    )

    def __post_init__(self) -> None:
        text, image = flag_of(self, "text"), flag_of(self, "image")
        if self.text is None and self.image is None:
            raise SettingsError(f"give {text}, {image} or both")
        if self.text is not None and not self.text.strip():
            raise SettingsError(f"{text} is empty; give the words to search for")
        check_options(self)


@dataclass(frozen=True)
class ReportSettings:
    """`report`: an HTML page of queries and their top results."""

    index: str = option(metavar="IDX", help="an index directory, or a reindex ROOT (its LATEST)")
    output: str = option(metavar="FILE.html", help="the page to write")
    queries: tuple[str, ...] | None = option(None, metavar="TEXT", help="queries to show")
    queries_from: tuple[str, ...] | None = option(
        None, metavar="GLOB", help="sample unique `query` values of a catalogue split"
    )
    split: str = option("test", help="the split --queries-from samples; 'all' for every row")
    n: int = option(12, at_least=1, help="queries to sample with --queries-from")
    k: int = option(5, at_least=1, help="results shown per query")
    model: str | None = option(None, metavar="SPEC", help="default: the model the embeddings were made with")
    seed: int = option(0, help="seed of the query sample")
    device: str | None = option(None, help="torch device (default: cuda when present, else cpu)")
    columns: Columns = nested(LABELLED, skip=("carry",))

    def __post_init__(self) -> None:
        check_options(self)
