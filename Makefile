# Two commands do all set-up on a fresh clone (only python3 >= 3.11 and make needed):
#   make serve   start the proxy, answering through the built-in upstream simulator
#   make test    run every check and the whole test suite
#   make bench   the proxy per core vs a near-free upstream (docs/benchmarks.md, ~2 min)
#   make image   build the llm-proxy:dev image (no registry needed; see docs/deployment.md)
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
UV := .uv/bin/uv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup serve test check lint typecheck proto proto-check bench clean image deploy-lint

setup: $(VENV)/.synced

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

serve: setup
	llm-proxy serve --simulator

check: setup lint typecheck proto-check

lint: deploy-lint
	ruff check .
	ruff format --check .
	lint-imports
	buf lint

# The Dockerfile (hadolint) and every Kubernetes manifest, offline against a pinned version.
K8S_VERSION := 1.31.0
deploy-lint:
	hadolint Dockerfile scripts/redis-image/Dockerfile
	kubernetes-validate --strict --quiet -k $(K8S_VERSION) $$(find k8s -name '*.yaml' | sort)

image:
	scripts/build_image.sh llm-proxy:dev

typecheck:
	mypy

proto: setup
	scripts/gen_proto.sh

proto-check:
	scripts/gen_proto.sh --check

test: check
	pytest

# The proxy pinned to one core against a fixed-reply upstream on the other (docs/benchmarks.md).
bench: setup
	python benchmarks/gateway.py

clean:
	rm -rf .uv $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache
