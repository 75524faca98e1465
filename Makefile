# Aftercare: `make run` sets everything up and serves http://127.0.0.1:5000; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ASSETS := web/static/vendor/.built
PORT   ?= 5000

.PHONY: run test lint assets browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Front-end bundles (bpmn-js, Chart.js) come from the npm registry via the committed lock file.
$(ASSETS): package.json package-lock.json $(wildcard web/assets/*)
	npm ci --no-audit --no-fund --loglevel=error
	npm run build --silent
	@touch $(ASSETS)

assets: $(ASSETS)

run: $(STAMP) $(ASSETS)
	$(BIN)/aftercare init
	$(BIN)/aftercare demo-staff
	$(BIN)/aftercare run --host 127.0.0.1 --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) $(ASSETS)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) node_modules web/static/vendor instance
