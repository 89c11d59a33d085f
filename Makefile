# The two commands of the README: `make sandbox` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)
LOGDIR ?= /tmp/egressgateway-logs

.PHONY: test sandbox deps venv kube helm flannel manifests image image-for-tests lint unit help

help:
	@echo "make sandbox   bring up a local multi-node cluster and show a pod leaving with its EIP"
	@echo "make image     build/egressgateway-image.oci.tar (egressgateway:dev) without Docker: mmdebstrap + pip, for ctr images import"
	@echo "make test      install everything, lint, type-check and run every test tier that can run here (CI=true: every tier but kind must)"

deps:
	@bash hack/install-deps.sh

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: $(STAMP)

# CI=true (as .ci/run sees it): a failed step fails the run; elsewhere the affected tiers skip and say why.
IN_CI = case "$${CI:-}" in [Tt]rue|TRUE|1|[Yy]es) true ;; *) false ;; esac

# $(call cached_build,COMMAND,NAME,WHAT,UNDER_CI,ELSEWHERE): run COMMAND (a hack/build-*.sh), its output in
# $(LOGDIR)/build-NAME.log; print its last line, or on failure its tail and then: under CI UNDER_CI (why
# it must work here) and fail, elsewhere ELSEWHERE (what will skip).
cached_build = mkdir -p $(LOGDIR); log=$(LOGDIR)/build-$(2).log; \
  if $(1) > $$log 2>&1; then tail -n 1 $$log; \
  else echo "$(3) build failed (see $$log):"; tail -n 20 $$log; \
    if $(IN_CI); then echo "CI=true: $(4), so this fails the run"; exit 1; fi; echo "$(5)"; fi

# The control plane build may fail (no Go proxy): under CI that fails `make kube` (the apiserver and
# e2e tiers must run there); elsewhere those tiers skip and say why.
kube:
	@$(call cached_build,bash hack/build-kube.sh,kube,control-plane,the apiserver and e2e tiers must run here,apiserver/e2e tiers will skip)

# Helm from the Go module proxy (hack/build-helm.sh), cached like the control plane. Under CI a failed
# build fails the run (lint renders the chart); elsewhere lint skips the chart and the chart tests skip.
HELM_VERSION ?= v3.22.0
HELM := $${EGW_HELM_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/egressgateway/helm}/$(HELM_VERSION)/bin/helm
CHART := manifests/chart/egressgateway
helm:
	@$(call cached_build,EGW_HELM_VERSION=$(HELM_VERSION) bash hack/build-helm.sh,helm,helm,the chart must be linted and rendered here,chart lint and chart tests will skip)

# flanneld from the Go module proxy (hack/build-flannel.sh: the newest v0.28.x), cached like helm, for
# `--cni flannel`. Under CI a failed build fails the run; elsewhere the flannel mode says why it cannot run.
flannel:
	@$(call cached_build,bash hack/build-flannel.sh,flannel,flanneld,the sandbox's flannel mode must run here,the sandbox's --cni flannel will not run)

# The plain manifests are the chart's rendering (hack/render_manifests.py); tests/unit/test_chart.py checks them.
manifests: venv helm
	EGW_HELM_VERSION=$(HELM_VERSION) $(PY) hack/render_manifests.py

# The product image without Docker or a registry (devtools/image.py; layers cached under build/image-cache).
image: venv
	$(PY) -m devtools.image

# In `make test`: a failed image build fails the run under CI (the cri tier imports the image); elsewhere
# tests/image tries the build again and reports why.
image-for-tests: venv
	@mkdir -p $(LOGDIR)
	@if $(PY) -m devtools.image > $(LOGDIR)/build-image.log 2>&1; then sed -n '/ -> /,$$p' $(LOGDIR)/build-image.log; \
	else echo "image build failed (see $(LOGDIR)/build-image.log):"; tail -n 20 $(LOGDIR)/build-image.log; \
	  if $(IN_CI); then echo "CI=true: the cri tier's image test must run here, so this fails the run"; exit 1; fi; fi

lint: venv helm
	@if [ -x "$(HELM)" ]; then "$(HELM)" lint --strict $(CHART) && "$(HELM)" template egressgateway $(CHART) -n kube-system > /dev/null; \
	else echo "no helm: chart lint skipped"; $(IN_CI) && exit 1 || true; fi
	$(VENV)/bin/ruff check egress_cni webhook devtools tests e2e bench hack
	$(VENV)/bin/mypy egress_cni webhook devtools tests/harness
	$(VENV)/bin/lint-imports --no-cache

unit: venv
	$(VENV)/bin/pytest -m unit

# $(call phase,NAME,COMMAND): run COMMAND, then print and record how long it took (also when it fails).
PHASES := $(LOGDIR)/test-phases.txt
phase = start=$$(date +%s%N); $(2); rc=$$?; ms=$$(( ($$(date +%s%N) - start) / 1000000 )); \
  printf 'phase %-7s %5d.%03d s%s\n' '$(1)' $$((ms / 1000)) $$((ms % 1000)) "$$([ $$rc = 0 ] || echo "  FAILED (exit $$rc)")" >> $(PHASES); \
  tail -n 1 $(PHASES); if [ $$rc != 0 ]; then echo "--- time per phase"; cat $(PHASES); fi; exit $$rc

# The phases run one after another; each prints its time, and all are listed again at the end.
test:
	@mkdir -p $(LOGDIR); : > $(PHASES)
	@$(call phase,deps,$(MAKE) --no-print-directory deps)
	@$(call phase,venv,$(MAKE) --no-print-directory venv)
	@$(call phase,kube,$(MAKE) --no-print-directory kube)
	@$(call phase,helm,$(MAKE) --no-print-directory helm)
	@$(call phase,flannel,$(MAKE) --no-print-directory flannel)
	@$(call phase,image,$(MAKE) --no-print-directory image-for-tests)
	@$(call phase,lint,$(MAKE) --no-print-directory lint)
	@$(call phase,tests,$(VENV)/bin/pytest)
	@echo "--- time per phase"; cat $(PHASES)

sandbox: deps venv kube helm flannel image
	$(PY) -m devtools.sandbox $(SANDBOX_ARGS)
