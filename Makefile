# The two commands of the README: `make sandbox` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)
LOGDIR ?= /tmp/egressgateway-logs

.PHONY: test sandbox deps venv kube lint unit help

help:
	@echo "make sandbox   bring up a local multi-node cluster and show a pod leaving with its EIP"
	@echo "make test      install everything, lint, type-check and run every test tier that can run here"

deps:
	@bash hack/install-deps.sh

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: $(STAMP)

# The control plane build may fail (no Go proxy); the apiserver/e2e tiers then skip and say why.
kube:
	@mkdir -p $(LOGDIR)
	@bash hack/build-kube.sh > $(LOGDIR)/build-kube.log 2>&1 \
	  && tail -n 1 $(LOGDIR)/build-kube.log \
	  || { echo "control-plane build failed (see $(LOGDIR)/build-kube.log); apiserver/e2e tiers will skip"; tail -n 20 $(LOGDIR)/build-kube.log; }

lint: venv
	$(VENV)/bin/ruff check egress_cni webhook devtools tests e2e bench hack
	$(VENV)/bin/mypy egress_cni webhook devtools tests/harness
	$(VENV)/bin/lint-imports --no-cache

unit: venv
	$(VENV)/bin/pytest -m unit

test: deps venv kube lint
	$(VENV)/bin/pytest

sandbox: deps venv kube
	$(PY) -m devtools.sandbox $(SANDBOX_ARGS)
