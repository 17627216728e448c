# dist-llm-train. Start here: `make up`, then `docker compose logs -f controller`; `make help` lists all.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PROFILE ?= lan
MODE ?= basic
WORKERS ?= 4
CONFIG ?= configs/$(MODE)_demo.yaml
IMAGE ?= dist-llm-train:dev
BASE_IMAGE ?= debian:trixie-slim
NETEM_BACKEND ?= auto
MATRIX ?= matrix
COMPOSE_PROJECT_NAME ?= dlt
HOST_UID := $(shell id -u)
HOST_GID := $(shell id -g)

export PROFILE MODE WORKERS CONFIG IMAGE NETEM_BACKEND COMPOSE_PROJECT_NAME HOST_UID HOST_GID

COMPOSE := docker compose $(if $(filter ml,$(MODE)),--profile ml)
# Roles that drive compose themselves (tests, experiments) get the socket and the repository at
# its host path, so that the relative bind mounts of compose.yaml resolve on the host's daemon.
DRIVER_RUN := docker run --rm -v /var/run/docker.sock:/var/run/docker.sock -v "$(CURDIR)":"$(CURDIR)" \
	-w "$(CURDIR)" -e HOST_UID -e HOST_GID -e IMAGE -e NETEM_BACKEND $(IMAGE)
# What the unit and integration tests need: real network namespaces for the delayer tests.
TEST_RUN := docker run --rm --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW --cap-add SYS_ADMIN \
	--security-opt no-new-privileges:true $(IMAGE)

.PHONY: help base-image image .env dirs check up down logs ps verify test test-unit test-e2e \
	experiments report bench bench-controller bench-netem bench-ps bench-ps-wan clean

help: ## list targets and variables
	@echo "make TARGET [PROFILE=lan] [MODE=basic|ml] [WORKERS=4] [CONFIG=configs/<mode>_demo.yaml]"
	@echo
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 20
	@echo
	@echo "Variables: PROFILE=$(PROFILE) (netem/<PROFILE>.yaml)  MODE=$(MODE)  WORKERS=$(WORKERS)"
	@echo "           CONFIG=$(CONFIG)  NETEM_BACKEND=$(NETEM_BACKEND) (auto|netem|userspace)"
	@echo "           MATRIX=$(MATRIX) (experiments/<MATRIX>.yaml)  IMAGE=$(IMAGE)  BASE_IMAGE=$(BASE_IMAGE)"

base-image: ## make sure a Debian 13 base image exists (pull, or build with debootstrap)
	@docker/build-base-image.sh $(BASE_IMAGE) > .base-image
	@echo "base image: $$(cat .base-image)"

image: base-image ## build the one image every role runs
	docker build -q --build-arg BASE_IMAGE=$$(cat .base-image) -f docker/Dockerfile -t $(IMAGE) .

.env: ## a random run token (the controller refuses workers without it)
	@echo "RUN_TOKEN=$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > .env
	@echo "wrote .env with a fresh RUN_TOKEN"

dirs:
	@mkdir -p runs checkpoints

check: image ## validate CONFIG and netem/PROFILE.yaml before anything starts
	@docker run --rm -v "$(CURDIR)/configs":/app/configs:ro -v "$(CURDIR)/netem":/app/netem:ro \
		$(IMAGE) dist-llm-train check --config $(CONFIG) --profile $(PROFILE) --workers $(WORKERS)

up: check .env dirs ## start (or update) the stack: PROFILE, MODE, WORKERS, CONFIG
	$(COMPOSE) up -d --remove-orphans
	@echo
	@echo "Stack up: mode=$(MODE) profile=$(PROFILE) workers=$(WORKERS) config=$(CONFIG)"
	@echo "  docker compose logs -f controller      one line per event"
	@echo "  curl -s localhost:8000/status          run state; /metrics for Prometheus, /docs for the API"
	@echo "  ls runs/                               the CSV row and JSON provenance when the run ends"
	@echo "  make verify PROFILE=$(PROFILE)          measure the emulated links against the preset"
	@echo "  make down                              stop, remove the emulation rules, clear run state"

down: ## stop the stack, remove every emulation rule and the controller state (runs/ stays)
	docker compose --profile ml down -v --remove-orphans --timeout 30

logs: ## follow every service's log
	$(COMPOSE) logs -f

ps: ## list the stack's containers and their health
	$(COMPOSE) ps

verify: ## measure RTT, jitter, loss, throughput of the running stack vs netem/PROFILE.yaml
	$(COMPOSE) exec netem dist-llm-train verify --profile $(PROFILE)

test: image ## the whole suite in containers: unit + integration, then e2e against the real stack, then the browser
	$(TEST_RUN) python3 -m pytest -q -p no:cacheprovider tests/unit tests/integration
	$(MAKE) --no-print-directory test-e2e
	$(MAKE) --no-print-directory test-browser

test-e2e: image .env dirs ## only the e2e tests (real compose stacks)
	$(DRIVER_RUN) python3 -m pytest -q -p no:cacheprovider tests/e2e

experiments: image .env dirs ## run experiments/MATRIX.yaml (PROFILES, CONFIGS, GLOB, REPEATS override it)
	$(DRIVER_RUN) dist-llm-train run-experiments --matrix experiments/$(MATRIX).yaml \
		$(if $(PROFILES),--profiles $(PROFILES)) $(if $(CONFIGS),--configs $(CONFIGS)) $(if $(GLOB),--glob "$(GLOB)") \
		$(if $(REPEATS),--repeats $(REPEATS))

report: image dirs ## tables and plots from runs/ into runs/report/ (README=README.md: its results section too)
	docker run --rm -u $(HOST_UID):$(HOST_GID) -v "$(CURDIR)":"$(CURDIR)" -w "$(CURDIR)" $(IMAGE) \
		dist-llm-train report --runs runs $(if $(README),--readme $(README))

bench: bench-controller bench-netem bench-ps bench-ps-wan ## every benchmark

bench-controller: image ## controller API latency and scheduling-cycle time
	docker run --rm $(IMAGE) dist-llm-train bench controller

bench-netem: image ## emulation fidelity and cost per preset
	$(DRIVER_RUN) dist-llm-train bench netem

bench-ps: image ## PS throughput and wire efficiency (local processes in one container)
	docker run --rm $(IMAGE) dist-llm-train bench ps

bench-ps-wan: image .env dirs ## PS time to target and utilization under lan / high_rtt (compose stacks, <= 46 min)
	$(DRIVER_RUN) dist-llm-train bench ps --skip throughput wire parity --wan

clean: down ## also remove the image and the generated .env
	-docker image rm $(IMAGE)
	rm -f .env .base-image

# ---- The browser: /ui, /docs and the report page in Chromium; Lighthouse; the report served -----------
# docker/Dockerfile.browser builds BROWSER_IMAGE (Chromium, Playwright) and LIGHTHOUSE_IMAGE (also Node.js)
# on top of IMAGE. EXTRA_CA: a PEM bundle that pip and npm in those builds trust (a TLS-intercepting
# proxy); by default $$PIP_CERT, else the host's own bundle.
BROWSER_IMAGE ?= $(IMAGE)-browser
LIGHTHOUSE_IMAGE ?= $(IMAGE)-lighthouse
EXTRA_CA ?= $(or $(PIP_CERT),$(wildcard /etc/ssl/certs/ca-certificates.crt))
REPORT_PORT ?= 8001
# --network host: the browser reaches the stack where a user's does, at its port on the host's 127.0.0.1.
BROWSER_RUN := docker run --rm --network host -v /var/run/docker.sock:/var/run/docker.sock \
	-v "$(CURDIR)":"$(CURDIR)" -w "$(CURDIR)" -e HOST_UID -e HOST_GID -e IMAGE -e NETEM_BACKEND $(BROWSER_IMAGE)
# $(call browser_build,TARGET,TAG): one stage of docker/Dockerfile.browser, from a context of that file and the CA.
browser_build = ctx=$$(mktemp -d) && trap 'rm -rf "$$ctx"' EXIT && cp docker/Dockerfile.browser "$$ctx/Dockerfile" \
	&& if [ -n "$(EXTRA_CA)" ]; then cp "$(EXTRA_CA)" "$$ctx/extra-ca.pem"; else : > "$$ctx/extra-ca.pem"; fi \
	&& docker build -q --build-arg IMAGE=$(IMAGE) --target $(1) -t $(2) "$$ctx"

.PHONY: browser-image test-browser lighthouse report-serve

browser-image: image ## IMAGE plus Debian's Chromium and Playwright, for the browser tests (EXTRA_CA=pem for pip)
	@$(call browser_build,browser,$(BROWSER_IMAGE))

test-browser: browser-image .env dirs ## browser tests: /ui during a real ML run (make up), /docs, the report offline
	$(BROWSER_RUN) python3 -m pytest -q -p no:cacheprovider tests/browser

lighthouse: image ## Lighthouse scores of runs/report (after make report); Lighthouse goes into .lighthouse/
	@$(call browser_build,lighthouse,$(LIGHTHOUSE_IMAGE))
	docker run --rm -u $(HOST_UID):$(HOST_GID) -v "$(CURDIR)":"$(CURDIR)" -w "$(CURDIR)" $(LIGHTHOUSE_IMAGE) \
		dist-llm-train bench lighthouse --report-dir runs/report --lighthouse-dir .lighthouse

report-serve: image ## serve runs/report at http://127.0.0.1:REPORT_PORT/ (opened there once, it installs and works offline)
	@echo "runs/report at http://127.0.0.1:$(REPORT_PORT)/ (Ctrl-C stops the server; the installed page stays)"
	docker run --rm -p 127.0.0.1:$(REPORT_PORT):8001 -v "$(CURDIR)/runs/report":/report:ro $(IMAGE) \
		python3 -m http.server --directory /report 8001
