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
TCP_CC ?=
MATRIX ?= matrix
COMPOSE_PROJECT_NAME ?= dlt
# ml.trainer: hivemind runs its PS and worker roles from a second image (docker/Dockerfile.hivemind), FROM IMAGE
HIVEMIND_IMAGE ?= $(firstword $(subst :, ,$(IMAGE)))-hivemind:$(lastword $(subst :, ,$(IMAGE)))
# A PEM bundle pip (and npm) trust when building the hivemind and browser images behind a TLS-intercepting
# proxy: by default $$PIP_CERT, else the host's own bundle; never committed, never in a final image.
EXTRA_CA ?= $(or $(PIP_CERT),$(wildcard /etc/ssl/certs/ca-certificates.crt))
# The file compose reads the credentials from: RUN_TOKEN (admits to the run) and each role's own
# (SIDECAR_TOKEN, PS_TOKEN, OPERATOR_TOKEN; compose gives each only to its service).
ENV_FILE ?= .env
CREDENTIALS := RUN_TOKEN SIDECAR_TOKEN PS_TOKEN OPERATOR_TOKEN
# Whoever runs make; a driver container (DRIVER_RUN) is root but passes the caller's ids on.
HOST_UID ?= $(shell id -u)
HOST_GID ?= $(shell id -g)

export PROFILE MODE WORKERS CONFIG IMAGE NETEM_BACKEND TCP_CC COMPOSE_PROJECT_NAME HOST_UID HOST_GID HIVEMIND_IMAGE

COMPOSE := docker compose --env-file $(ENV_FILE)
ML_PROFILE := $(if $(filter ml,$(MODE)),--profile ml)
# Roles that drive compose themselves (tests, experiments) get the socket and the repository at
# its host path, so that the relative bind mounts of compose.yaml resolve on the host's daemon.
# EXTRA_CA= there: the image's own CA bundle is not the host's, and would replace docker/extra-ca.pem.
DRIVER_RUN := docker run --rm -v /var/run/docker.sock:/var/run/docker.sock -v "$(CURDIR)":"$(CURDIR)" \
	-w "$(CURDIR)" -e HOST_UID -e HOST_GID -e IMAGE -e HIVEMIND_IMAGE -e NETEM_BACKEND -e TCP_CC -e EXTRA_CA= $(IMAGE)
# What the unit and integration tests need: real network namespaces for the delayer tests.
TEST_RUN_IN := docker run --rm --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW --cap-add SYS_ADMIN \
	--security-opt no-new-privileges:true
TEST_RUN := $(TEST_RUN_IN) $(IMAGE)
# The tests of the hivemind trainer that need hivemind itself (the main image's run skips them).
HIVEMIND_TESTS := tests/integration/test_hivemind_run.py

.PHONY: FORCE help preflight base-image image image-hivemind docker/extra-ca.pem dirs check up down logs ps verify test test-e2e \
	experiments report bench bench-controller bench-netem bench-tcp bench-trace bench-ps bench-ps-wan clean \
	browser-image test-browser lighthouse report-serve

help: ## list targets and variables
	@echo "make TARGET [PROFILE=lan] [MODE=basic|ml] [WORKERS=4] [CONFIG=configs/<mode>_demo.yaml]"
	@echo
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 20
	@echo
	@echo "Variables: PROFILE=$(PROFILE) (netem/<PROFILE>.yaml)  MODE=$(MODE)  WORKERS=$(WORKERS)"
	@echo "           CONFIG=$(CONFIG)  NETEM_BACKEND=$(NETEM_BACKEND) (auto|netem|userspace)"
	@echo "           TCP_CC=$(TCP_CC) (empty: the preset's, default cubic; cubic|bbr|reno|host)"
	@echo "           MATRIX=$(MATRIX) (experiments/<MATRIX>.yaml)  IMAGE=$(IMAGE)  BASE_IMAGE=$(BASE_IMAGE)"
	@echo "           ENV_FILE=$(ENV_FILE): RUN_TOKEN and the role credentials, written by the first make up (mode 600)"
	@echo "           and then kept; to rotate them: make down, rm $(ENV_FILE), make up (recreates every container)"

# What must hold before compose is touched. More checks join as prerequisites of this target.
preflight: ## check Docker Engine >= 20.10 and Compose >= 2.20.2 (every compose target runs it first)
	@docker/check-versions.sh

base-image: ## make sure a Debian 13 base image exists (pull, or build with debootstrap)
	@docker/build-base-image.sh $(BASE_IMAGE) > .base-image
	@echo "base image: $$(cat .base-image)"

image: base-image ## build the one image every role runs
	docker build -q --build-arg BASE_IMAGE=$$(cat .base-image) -f docker/Dockerfile -t $(IMAGE) .

# ---- the hivemind trainer (ml.trainer: hivemind) ----
# The trainer CONFIG names, read by the main image once `check` has built it (a recipe expands after its
# prerequisites are made): `up` then builds the hivemind image and runs the PS and workers from it.
TRAINER = $(shell docker run --rm -v "$(CURDIR)/configs":/app/configs:ro $(IMAGE) python3 -c \
	'import sys; from dist_llm_train.config import load_run_config as load; c = load(sys.argv[1]); \
	print(c.ml.trainer if c.ml else "builtin")' $(CONFIG) 2>/dev/null)

image-hivemind: image docker/extra-ca.pem ## build the hivemind image (hivemind pinned by hash; EXTRA_CA=ca.pem for a TLS proxy)
	docker build -q --build-arg MAIN_IMAGE=$(IMAGE) --build-arg BASE_IMAGE=$$(cat .base-image) \
		-f docker/Dockerfile.hivemind -t $(HIVEMIND_IMAGE) .

# The build context's CA file: EXTRA_CA's content when given, else kept as it is (empty when new), so a
# rebuild without EXTRA_CA (a driver container's make: DRIVER_RUN empties it) reuses the cached layers.
docker/extra-ca.pem:
	@if [ -z "$(EXTRA_CA)" ]; then [ -e $@ ] || : > $@; \
	elif [ -r "$(EXTRA_CA)" ]; then cmp -s "$(EXTRA_CA)" $@ || cp "$(EXTRA_CA)" $@; \
	else echo "EXTRA_CA=$(EXTRA_CA) (or PIP_CERT): no such file; give a PEM bundle, or EXTRA_CA= for none" >&2; exit 1; fi

# Each credential random, written only when the file lacks it and never rotated by a target: a new
# value changes services' environment, and compose then recreates them. So a run of this rule that
# finds every credential writes nothing (an .env from before the role credentials gets them added once).
$(ENV_FILE): FORCE
	@umask 077 && for name in $(CREDENTIALS); do grep -q "^$$name=" $@ 2>/dev/null && continue; \
		echo "$$name=$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >> $@ && \
		echo "wrote a new $$name to $@ (kept until you delete it)"; done

FORCE:

dirs:
	@mkdir -p runs checkpoints

check: image ## validate CONFIG and netem/PROFILE.yaml before anything starts
	@docker run --rm -v "$(CURDIR)/configs":/app/configs:ro -v "$(CURDIR)/netem":/app/netem:ro \
		$(IMAGE) dist-llm-train check --config $(CONFIG) --profile $(PROFILE) --workers $(WORKERS) \
		$(if $(TCP_CC),--tcp-cc $(TCP_CC))

up: preflight check $(ENV_FILE) dirs ## start (or update) the stack: PROFILE, MODE, WORKERS, CONFIG
	$(if $(filter hivemind,$(TRAINER)),$(MAKE) --no-print-directory image-hivemind && TRAINER_IMAGE=$(HIVEMIND_IMAGE)) \
		$(COMPOSE) $(ML_PROFILE) up -d --remove-orphans
	@echo
	@echo "Stack up: mode=$(MODE) profile=$(PROFILE) workers=$(WORKERS) config=$(CONFIG)"
	@echo "  http://localhost:$${CONTROLLER_PORT:-8000}/ui          the run live in a browser"
	@echo "  docker compose logs -f controller      one line per event"
	@echo "  curl -s localhost:$${CONTROLLER_PORT:-8000}/status          run state; /metrics for Prometheus, /docs for the API"
	@echo "  ls runs/                               the CSV row and JSON provenance when the run ends"
	@echo "  make verify PROFILE=$(PROFILE)          measure the emulated links against the preset"
	@echo "  make down                              stop, remove the emulation rules, clear run state"

down: preflight $(ENV_FILE) ## stop the stack, remove every emulation rule and the controller state (runs/ stays)
	$(COMPOSE) --profile ml stop --timeout 30 netem   # first: it removes its rules and its helper containers
	docker ps -aq --filter label=dist-llm-train.helper-of=$(COMPOSE_PROJECT_NAME) | xargs -r docker rm -f >/dev/null
	$(COMPOSE) --profile ml down -v --remove-orphans --timeout 30

logs: preflight $(ENV_FILE) ## follow every service's log
	$(COMPOSE) $(ML_PROFILE) logs -f

ps: preflight $(ENV_FILE) ## list the stack's containers and their health
	$(COMPOSE) $(ML_PROFILE) ps

verify: preflight $(ENV_FILE) ## measure RTT, jitter, loss, throughput of the running stack vs netem/PROFILE.yaml
	$(COMPOSE) $(ML_PROFILE) exec netem dist-llm-train verify --profile $(PROFILE)

test: preflight image image-hivemind ## the whole suite in containers: unit + integration (and hivemind's), then e2e, then the browser
	$(TEST_RUN) python3 -m pytest -q -p no:cacheprovider tests/unit tests/integration
	$(TEST_RUN_IN) --shm-size 256m $(HIVEMIND_IMAGE) python3 -m pytest -q -p no:cacheprovider $(HIVEMIND_TESTS)
	$(MAKE) --no-print-directory test-e2e
	$(MAKE) --no-print-directory test-browser

test-e2e: preflight image image-hivemind dirs ## only the e2e tests (real compose stacks)
	@# the TCP congestion controls the e2e presets use (cubic, and bbr in tcp_mix) must be allowed here
	@docker run --rm $(IMAGE) dist-llm-train check --config configs/basic_ci.yaml --profile tcp_mix >/dev/null
	$(DRIVER_RUN) python3 -m pytest -q -p no:cacheprovider tests/e2e

experiments: preflight image dirs ## run experiments/MATRIX.yaml (PROFILES, CONFIGS, GLOB, REPEATS override it)
	$(if $(shell grep -ls hivemind experiments/$(MATRIX).yaml $(CONFIGS)),$(MAKE) --no-print-directory image-hivemind)
	$(DRIVER_RUN) dist-llm-train run-experiments --matrix experiments/$(MATRIX).yaml \
		$(if $(PROFILES),--profiles $(PROFILES)) $(if $(CONFIGS),--configs $(CONFIGS)) $(if $(GLOB),--glob "$(GLOB)") \
		$(if $(REPEATS),--repeats $(REPEATS))

report: image dirs ## tables and plots from runs/ into runs/report/ (README=README.md: its results section too; INCLUDE_LATE=1: count runs degraded only by delayer lateness)
	docker run --rm -u $(HOST_UID):$(HOST_GID) -v "$(CURDIR)":"$(CURDIR)" -w "$(CURDIR)" $(IMAGE) \
		dist-llm-train report --runs runs $(if $(README),--readme $(README)) $(if $(INCLUDE_LATE),--include-late)

bench: bench-controller bench-netem bench-tcp bench-trace bench-ps bench-ps-wan ## every benchmark

bench-controller: image ## controller API latency and scheduling-cycle time
	docker run --rm $(IMAGE) dist-llm-train bench controller

bench-netem: preflight image ## emulation fidelity and cost per preset
	$(DRIVER_RUN) dist-llm-train bench netem

bench-tcp: preflight image ## one TCP flow on lossy presets, cubic vs bbr, beside the Mathis bound (netem/README.md table)
	$(DRIVER_RUN) dist-llm-train bench tcp

bench-trace: image ## does a traced link's throughput follow its trace (TRACE_PROFILE=varying, TRACE_SECONDS=40 per trace)
	$(TEST_RUN) dist-llm-train bench trace --profile $(or $(TRACE_PROFILE),varying) --seconds $(or $(TRACE_SECONDS),40)

bench-ps: image ## PS throughput (loopback and a 1 Gbit/s link, CURVE and PLAIN) and wire efficiency (one container)
	$(TEST_RUN) dist-llm-train bench ps

bench-ps-wan: preflight image dirs ## PS time to target and utilization under lan / high_rtt (compose stacks, <= 46 min)
	$(DRIVER_RUN) dist-llm-train bench ps --skip throughput wire parity --wan

clean: down ## also remove the image and the generated .env
	-docker image rm $(IMAGE)
	-docker image rm $(HIVEMIND_IMAGE)
	rm -f $(ENV_FILE) .base-image docker/extra-ca.pem

# ---- The browser: /ui, /docs and the report page in Chromium; Lighthouse; the report served -----------
# docker/Dockerfile.browser builds BROWSER_IMAGE (Chromium, Playwright) and LIGHTHOUSE_IMAGE (also Node.js)
# on top of IMAGE; pip and npm in those builds trust EXTRA_CA (defined at the top).
BROWSER_IMAGE ?= $(IMAGE)-browser
LIGHTHOUSE_IMAGE ?= $(IMAGE)-lighthouse
REPORT_PORT ?= 8001
# --network host: the browser reaches the stack where a user's does, at its port on the host's 127.0.0.1.
BROWSER_RUN := docker run --rm --network host -v /var/run/docker.sock:/var/run/docker.sock \
	-v "$(CURDIR)":"$(CURDIR)" -w "$(CURDIR)" -e HOST_UID -e HOST_GID -e IMAGE -e NETEM_BACKEND -e TCP_CC $(BROWSER_IMAGE)
# $(call browser_build,TARGET,TAG): one stage of docker/Dockerfile.browser, from a context of that file and the CA.
browser_build = ctx=$$(mktemp -d) && trap 'rm -rf "$$ctx"' EXIT && cp docker/Dockerfile.browser "$$ctx/Dockerfile" \
	&& if [ -z "$(EXTRA_CA)" ]; then : > "$$ctx/extra-ca.pem"; \
	   elif [ -r "$(EXTRA_CA)" ]; then cp "$(EXTRA_CA)" "$$ctx/extra-ca.pem"; \
	   else echo "EXTRA_CA=$(EXTRA_CA) (or PIP_CERT): no such file; give a PEM bundle, or EXTRA_CA= for none" >&2; exit 1; fi \
	&& docker build -q --build-arg IMAGE=$(IMAGE) --target $(1) -t $(2) "$$ctx"

browser-image: image ## IMAGE plus Debian's Chromium and Playwright, for the browser tests (EXTRA_CA=pem for pip)
	@$(call browser_build,browser,$(BROWSER_IMAGE))

test-browser: preflight browser-image dirs ## browser tests: /ui during a real ML run (make up), /docs, the report offline
	$(BROWSER_RUN) python3 -m pytest -q -p no:cacheprovider tests/browser

lighthouse: image ## Lighthouse scores of runs/report (after make report); Lighthouse goes into .lighthouse/
	@$(call browser_build,lighthouse,$(LIGHTHOUSE_IMAGE))
	docker run --rm -u $(HOST_UID):$(HOST_GID) -v "$(CURDIR)":"$(CURDIR)" -w "$(CURDIR)" $(LIGHTHOUSE_IMAGE) \
		dist-llm-train bench lighthouse --report-dir runs/report --lighthouse-dir .lighthouse

report-serve: image ## serve runs/report at http://127.0.0.1:REPORT_PORT/ (opened there once, it installs and works offline)
	@echo "runs/report at http://127.0.0.1:$(REPORT_PORT)/ (Ctrl-C stops the server; the installed page stays)"
	docker run --rm -p 127.0.0.1:$(REPORT_PORT):8001 -v "$(CURDIR)/runs/report":/report:ro $(IMAGE) \
		python3 -m http.server --directory /report 8001
