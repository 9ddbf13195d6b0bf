# Two commands set up a fresh machine: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FI := HF_HUB_OFFLINE=1 $(VENV)/bin/fusionindex
DEMO ?= demo
# Real images and captions without internet: Debian's emoji font + CLDR names, openclipart.
DATA_PACKAGES := fonts-noto-color-emoji unicode-cldr-core openclipart-png openclipart-svg
DATA_FILES := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf /usr/share/unicode/cldr/common/annotations/en.xml /usr/share/openclipart/png

.PHONY: help install java-runtime data-packages test-packages test test-unit test-slow lint format docs demo demo-sample bench bench-peer bench-autofaiss clean

install: $(VENV)/.installed java-runtime

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,dataflow,spark]'
	touch $@

# Java for `embed --engine spark` (pyspark starts a JVM): Debian's JRE where apt and root are available;
# says what to install otherwise (the Spark tests then skip; --engine spark exits 2 with the same advice).
JAVA_PACKAGE := openjdk-17-jre-headless
java-runtime:
	@if command -v java >/dev/null 2>&1 || [ -x "$$JAVA_HOME/bin/java" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(JAVA_PACKAGE) >/dev/null) \
	  || echo "WARNING: could not install $(JAVA_PACKAGE); --engine spark and its tests need Java 17+"; \
	else echo "NOTE: --engine spark (and its tests) need Java 17+: sudo apt-get install -y $(JAVA_PACKAGE)"; fi

# Installs the catalogue's Debian packages where apt and root are available; says what to
# install otherwise (make-catalogue then fails with the same advice, its tests skip).
data-packages:
	@if ls $(DATA_FILES) >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DATA_PACKAGES) >/dev/null) \
	  || echo "WARNING: could not install $(DATA_PACKAGES)"; \
	else echo "NOTE: the real catalogue needs: sudo apt-get install -y $(DATA_PACKAGES)"; fi

# Debian's chromium: the nightly report is checked in a real headless browser (the test skips without it).
test-packages:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "WARNING: could not install chromium"; \
	else echo "NOTE: the report's browser test needs: sudo apt-get install -y chromium"; fi

# Test tiers (docs/development.md). TEST_ARGS passes more pytest options, e.g. TEST_ARGS='-m "not spark"'.
# `make test` (what CI runs): tests/unit, then every integration test not marked slow: real Beam pipelines
# (marker beam), Spark local clusters (spark), an S3 server on localhost (s3), headless Chromium (browser),
# commands killed with SIGKILL and re-run (kill9); those whose tool is missing skip and say what to install.
test: install data-packages test-packages
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" $(TEST_ARGS)

# The tests marked slow: the benchmark harness's embed, stages and reindex sections at toy sizes.
test-slow: install data-packages
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow $(TEST_ARGS)

# tests/unit alone: settings, run key, row classification, shard commits, gates, index choice, drift
# (no runner, no model; seconds).
test-unit: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/unit $(TEST_ARGS)

# One line per target.
help:
	@echo "make demo         install, then the main job on a real emoji catalogue (fine-tune, embed, index, search, 2 nights)"
	@echo "make demo-sample  the pipeline alone on synthetic shapes with a random CLIP"
	@echo "make test         install, then tests/unit and every integration test not marked slow (CI)"
	@echo "make test-unit    tests/unit only: no runner, no model (seconds)"
	@echo "make test-slow    the tests marked slow (the benchmark harness at toy sizes)"
	@echo "make lint         ruff format --check, ruff check, docs/cli.md up to date (CI); make format rewrites"
	@echo "make docs         regenerate docs/cli.md and the README's command list from the settings fields"
	@echo "make bench        performance figures (docs/performance.md); bench-peer, bench-autofaiss add peers"
	@echo "make clean        remove demo/"

# ruff: formatting and lint (lines <= 120); run by CI. `make format` rewrites the files.
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pipelines.cli.docs --check

# docs/cli.md and the README's command list, generated from the settings classes' fields (pipelines/cli/docs.py).
docs: install
	$(PY) -m pipelines.cli.docs

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The main job on a small real sample: emoji catalogue -> fine-tune a ResNet18 + MiniLM model
# briefly (reused when $(DEMO)/model exists) -> evaluate -> embed (Beam) -> index -> search -> HTML,
# then two nights of `reindex` (incremental, gated, published through ROOT/LATEST).
demo: install data-packages
	$(FI) make-catalogue --source emoji --output $(DEMO)/catalogue
	@if [ -f $(DEMO)/model/fusionindex.json ] && [ -f $(DEMO)/model/training.json ]; then \
	  echo "== reusing the fine-tuned model in $(DEMO)/model (delete it to train again)"; \
	else $(FI) finetune --train $(DEMO)/catalogue --val $(DEMO)/catalogue --output $(DEMO)/model \
	  --image-size 128 --epochs 8 --max-minutes 4 --batch-size 64; fi
	$(FI) evaluate --model $(DEMO)/model --data $(DEMO)/catalogue --split test --json $(DEMO)/eval.json
	$(FI) embed --input $(DEMO)/catalogue --output $(DEMO)/embeddings --model $(DEMO)/model --fusion attention
	$(FI) build-index --embeddings $(DEMO)/embeddings --output $(DEMO)/index
	@echo "== search --text 'smiling cat'"
	@$(FI) -q search --index $(DEMO)/index --text "smiling cat" --k 5
	@echo "== search --text 'red fruit' --json"
	@$(FI) -q search --index $(DEMO)/index --text "red fruit" --k 3 --json
	$(FI) -q report --index $(DEMO)/index --output $(DEMO)/report.html --queries "smiling cat" "red fruit" "rocket" \
	  --queries-from $(DEMO)/catalogue --split test --n 12
	@echo "== two nights of the nightly job (ROOT $(DEMO)/nightly)"
	rm -rf $(DEMO)/nightly $(DEMO)/night1
	$(FI) -q make-catalogue --source emoji --limit 1200 --output $(DEMO)/night1
	$(FI) -q make-catalogue --source openclipart --limit 100 --output $(DEMO)/night1
	@echo "== night 1: the first 1,200 emoji and 100 clip-art images"
	$(FI) -q reindex --input $(DEMO)/night1 --root $(DEMO)/nightly --model $(DEMO)/model --fusion attention
	@echo "== night 2: all 1,322 emoji and no clip art: 122 new rows, 100 deleted, 1,200 unchanged (copied, not embedded)"
	$(FI) -q reindex --input $(DEMO)/catalogue --root $(DEMO)/nightly --model $(DEMO)/model --fusion attention
	@echo "== search --index $(DEMO)/nightly (follows LATEST) --text 'smiling cat'"
	@$(FI) -q search --index $(DEMO)/nightly --text "smiling cat" --k 3
	@echo
	@echo "Open $(DEMO)/report.html and $(DEMO)/nightly/runs/*/report.html (one per night)."
	@echo "Figures: $(DEMO)/eval.json (test split), $(DEMO)/model/training.json, $(DEMO)/nightly/runs/*/run.json."
	@echo "The image tower starts from random weights (no pretrained CNN is reachable offline) and trains"
	@echo "for a few CPU minutes, so expect rough rankings; see docs/finetune-report.md for a longer run."

# The pipeline alone, no Debian packages: synthetic shapes and a RANDOM tiny CLIP.
demo-sample: install
	$(FI) make-sample --output $(DEMO)/sample --rows 1200 --shards 4
	$(FI) make-random-clip --output $(DEMO)/random-clip
	$(FI) embed --input '$(DEMO)/sample/*.parquet' --output $(DEMO)/sample-embeddings --model $(DEMO)/random-clip
	$(FI) build-index --embeddings $(DEMO)/sample-embeddings --output $(DEMO)/sample-index
	@$(FI) -q search --index $(DEMO)/sample-index --text "a red circle on a white background" --k 5
	@echo "NOTE: a RANDOM, untrained CLIP: these rankings are meaningless. Pass a real CLIP checkpoint as --model."

# Figures, not pass/fail: prints a table, writes benchmarks/results/latest.json (~5 min on 2 CPUs).
# The clip-retrieval comparison runs when .peer-venv exists (make bench-peer creates it).
bench: install
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.bench $(BENCH_ARGS)

# clip-retrieval 2.45 in its own venv (~6 GB, its own torch), then the full benchmark.
bench-peer: install
	test -x .peer-venv/bin/clip-retrieval || ($(PYTHON) -m venv .peer-venv && .peer-venv/bin/pip install -q "clip-retrieval==2.45.*" "setuptools<70")
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.bench $(BENCH_ARGS)

# autofaiss 2.18 in its own venv (faiss-cpu 1.9: it breaks on faiss 1.15), then the budget section,
# which runs it on the same vectors as build-index (~15 min).
bench-autofaiss: install
	test -x .autofaiss-venv/bin/python || ($(PYTHON) -m venv .autofaiss-venv && .autofaiss-venv/bin/pip install -q \
	  "autofaiss==2.18.0" "faiss-cpu==1.9.0.post1" "pyarrow<16")
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.bench --sections budget $(BENCH_ARGS)

clean:
	rm -rf $(DEMO) .pytest_cache
