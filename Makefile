# Everything a fresh machine needs, in two commands:
#   make demo   install into .venv and run the federated demo on data that ships with the package
#   make test   install into .venv and run the whole test suite (what CI runs)
# The exact versions used here are pinned in constraints.txt (CPU torch on this machine).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
export MLFLOW_DISABLE_TELEMETRY := true
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: install browser nginx demo test test-fast lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/fedmol demo

# The web page's test drives Debian's chromium and chromedriver (never a downloaded browser).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

# The deployment test (tests/deploy/test_exposure.py) runs Debian's nginx as the Fleet proxy, as a
# child on 127.0.0.1 ports. Where systemd runs, installing it also starts the distro's site on :80.
nginx:
	@if [ ! -x /usr/sbin/nginx ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx-light >/dev/null; \
	fi

test: install browser nginx
	$(PY) -m pytest -q --durations=15

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .

# The quick speed/quality benchmarks, run as modules (README: Benchmarks lists them all);
# `make bench BENCH_FLAGS=--quick` is their smoke run (results as *_quick.json).
bench: install
	$(PY) -m benchmarks.featurize $(BENCH_FLAGS)
	$(PY) -m benchmarks.train_speed $(BENCH_FLAGS)
	$(PY) -m benchmarks.baselines $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) fedmol-demo .pytest_cache
