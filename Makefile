# Aftercare: `make run` sets everything up and serves http://127.0.0.1:5000; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ASSETS := web/static/vendor/.built
MO     := web/translations/zh/LC_MESSAGES/messages.mo
PORT   ?= 5000

.PHONY: run test lint assets browser translations bench chaos clean

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

# Staff UI in Chinese: the catalogue is committed as .po and compiled here (the app also compiles a stale one).
$(MO): web/translations/zh/LC_MESSAGES/messages.po | $(STAMP)
	$(BIN)/pybabel -q compile -d web/translations -D messages

# After changing UI text: re-extract, update the catalogue, fill it from web/translations/zh_strings.py.
translations: $(STAMP)
	$(BIN)/pybabel -q extract -F web/translations/babel.cfg -k lazy_gettext --no-location --sort-output \
		--project=Aftercare -o web/translations/messages.pot web
	$(BIN)/pybabel -q update -i web/translations/messages.pot -d web/translations -D messages --no-fuzzy-matching
	$(BIN)/python -m web.translations.zh_strings
	$(BIN)/pybabel -q compile -d web/translations -D messages

# Browser tests drive Debian's Chromium through Playwright (pip, test extras); no browser is ever downloaded.
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium) || \
		echo "WARNING: could not install chromium: the browser tests will be SKIPPED" >&2

run: $(STAMP) $(ASSETS) $(MO)
	$(BIN)/aftercare init
	$(BIN)/aftercare demo-staff
	$(BIN)/aftercare demo-data
	$(BIN)/aftercare run --host 127.0.0.1 --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) $(ASSETS) $(MO) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Every bench at small sizes, one table (a few minutes); `$(BIN)/python bench/suite.py --full` for the issue's sizes.
bench: $(STAMP)
	$(BIN)/python bench/suite.py

# The long load-and-kill run (SIGKILLs web and timer workers under load; under 10 minutes).
chaos: $(STAMP)
	$(BIN)/python bench/chaos.py

clean:
	rm -rf $(VENV) node_modules web/static/vendor instance
