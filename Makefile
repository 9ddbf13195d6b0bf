# Two commands set up a fresh machine: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FI := HF_HUB_OFFLINE=1 $(VENV)/bin/fusionindex
DEMO ?= demo

.PHONY: install test test-slow demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

test-slow: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow

demo: install
	$(FI) make-sample --output $(DEMO)/catalogue --rows 1200 --shards 4
	$(FI) make-random-clip --output $(DEMO)/random-clip
	$(FI) embed --input '$(DEMO)/catalogue/*.parquet' --output $(DEMO)/embeddings --model $(DEMO)/random-clip
	$(FI) build-index --embeddings $(DEMO)/embeddings --output $(DEMO)/index
	@echo "== search --text 'a red circle on a white background'"
	@$(FI) -q search --index $(DEMO)/index --text "a red circle on a white background" --k 5
	@echo "== search --text 'a blue square' --json"
	@$(FI) -q search --index $(DEMO)/index --text "a blue square" --k 3 --json
	@echo
	@echo "NOTE: the demo model is a RANDOM, untrained CLIP: the rankings above are meaningless."
	@echo "      It only shows the pipeline running end to end. For real results pass a real"
	@echo "      CLIP checkpoint: --model openai/clip-vit-base-patch32 (hub id, needs network or"
	@echo "      the HF cache) or --model /path/or/gs://bucket/dir saved with save_pretrained."

clean:
	rm -rf $(DEMO) .pytest_cache
