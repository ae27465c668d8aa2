# The two commands of a fresh clone: `make up` (run tiffin) and `make test` (run the tests).
CONFIG ?= examples/smollm2.yaml
PYTEST_ARGS ?=

.PHONY: setup up test lint

setup:
	@bash scripts/setup.sh

up: setup
	.venv/bin/tiffin up $(CONFIG)

test: setup
	@bash scripts/setup_browser.sh  # Chromium for the dashboard's browser test (apt-get, as root; once)
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
