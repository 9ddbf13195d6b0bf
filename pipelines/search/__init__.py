"""Querying a built index with the model its items were embedded with: `search` and `report`.

settings.py  SearchSettings (importable without torch: the CLI's parser uses it)
searcher.py  Searcher: index + towers + fusion, queries encoded the way items were
report.py    run_report: queries (given or sampled from a catalogue split) and their hits
html.py      the report page (pure: results in, HTML out)
"""
