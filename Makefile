# One-command set-up: `make test` builds everything it needs from this repository.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
NPMSTAMP:= node_modules/.installed

.PHONY: test sysdeps venv venv-15118 npm web lint sim perf mpy clean

# The tests run in parallel workers: most wait on boards, brokers and sessions, not the CPU
# (the four workers keep two cores about 85 % busy), so four on two cores.
# --dist loadfile keeps each test module on one worker: module-scoped rigs (board, broker,
# CSMS), tests that run in file order and a firmware module's single MicroPython VM run stay
# whole; the longest modules go first (tests/conftest.py). Tests marked `serial` time the
# code under test in real time, so they must have the CPU when they ask for it. Where this
# user may raise a process's priority (root, CAP_SYS_NICE) they run one at a time beside the
# parallel run, ahead of it and of anything else on the machine (nice -10); elsewhere they run
# after it, alone. The parallel run keeps the ordinary priority either way, so a busy machine
# slows it no more than before. Their report follows the parallel one; the target fails if
# either run failed.
PYTEST_WORKERS ?= 4
SERIAL_LOG := build/test-serial.log
PARALLEL_RUN = $(VPY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not serial" tests
SERIAL_RUN = $(VPY) -m pytest -q -p no:cacheprovider -m serial tests
test: sysdeps venv venv-15118 npm web lint mpy
	mkdir -p build
	rc=0; \
	if [ "$$(nice -n -10 nice 2>/dev/null)" = "-10" ]; then \
	  nice -n -10 $(SERIAL_RUN) > $(SERIAL_LOG) 2>&1 & serial=$$!; \
	  $(PARALLEL_RUN) || rc=$$?; \
	  wait $$serial || rc=$$?; \
	  echo "-- the real-time tests (marked serial), run beside the others at a higher priority:"; \
	  cat $(SERIAL_LOG); \
	else \
	  $(PARALLEL_RUN) || rc=$$?; \
	  echo "-- the real-time tests (marked serial), alone:"; \
	  $(SERIAL_RUN) || rc=$$?; \
	fi; \
	exit $$rc

venv: $(STAMP)
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	$(VPY) -m pip install -q --no-deps -e .
	touch $@

# The ISO 15118 SECC runs in its own venv (its pins clash with ours): `v2g secc` starts
# .venv-15118/bin/python on host_tools/secc/worker.py. Its EXI codec needs a JRE (sysdeps).
VENV15  := .venv-15118
STAMP15 := $(VENV15)/.installed
venv-15118: $(STAMP15)
$(STAMP15): requirements-15118.txt
	$(PY) -m venv $(VENV15)
	$(VENV15)/bin/python -m pip install -q --upgrade pip
	$(VENV15)/bin/python -m pip install -q --no-deps -r requirements-15118.txt
	touch $@

# System packages (Node.js, Mosquitto for the bridge tests): checked on every run, which costs
# a few lookups when all is present; installed with apt-get (sudo -n when not root) where missing.
sysdeps:
	PYTHON=$(PY) ./tools/system-deps.sh

npm: $(NPMSTAMP)
$(NPMSTAMP): package.json package-lock.json | sysdeps
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The driver's app's browser libraries, copied from node_modules (pinned in package-lock.json)
# into the folder `v2g api` serves (the API's interactive docs too): nothing is fetched from a
# CDN when the app runs.
WEBV := host_tools/api/web/vendor
web: $(WEBV)/.installed
$(WEBV)/.installed: $(NPMSTAMP)
	rm -rf $(WEBV) && mkdir -p $(WEBV)/fetch-event-source $(WEBV)/swagger-ui
	cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css node_modules/uplot/LICENSE $(WEBV)/
	cp node_modules/@microsoft/fetch-event-source/lib/esm/*.js node_modules/@microsoft/fetch-event-source/LICENSE $(WEBV)/fetch-event-source/
	cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css node_modules/swagger-ui-dist/LICENSE $(WEBV)/swagger-ui/
	touch $@

lint: venv
	$(VENV)/bin/ruff check .

# Compile every firmware and board file with mpy-cross for the Cortex-M4 and report the size.
mpy: venv
	$(VPY) -m host_tools.mpy_check

# The demo scenario in simulated time (timeline, plot), then the live station: the firmware on
# the MicroPython VM with the SDM630 meter simulator on its RS-485 port, until Ctrl-C.
# SIM_LIVE=0 stops after the demo.
SIM_LIVE ?= 1
sim: venv npm
	$(VENV)/bin/v2g sim scenarios/demo.toml --plot build/sim/demo.png
	@if [ "$(SIM_LIVE)" != 0 ]; then \
	  echo "live station: firmware on the MicroPython VM, SDM630 meter on Modbus RTU; Ctrl-C stops it"; \
	  $(VENV)/bin/v2g vboard --state build/sim/board --meter sdm630; fi

perf: venv venv-15118 npm web
	$(VPY) -m bench

clean:
	rm -rf $(VENV) $(VENV15) node_modules build $(WEBV)
