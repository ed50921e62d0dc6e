# fedgate: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv at the repository root on first use (Python >= 3.11 needed).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup demo test lint bench-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fedgate needs Python >= 3.11 (set PYTHON=...)")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The demo's regions put nginx (the fleet-only proxy) in front of each SuperLink.
demo: setup
	PATH="$$(.ci/nginx.sh):$$PATH" $(VENV)/bin/fedgate demo

# Server binaries the integration tests start for real: PostgreSQL and nginx; and the browser
# (chromium + chromium-driver) the audit web view's tests drive; Pango for the PDF report.
# pytest's exit code 5 (no tests collected) is a failure too.
test: setup
	.ci/pango.sh
	PATH="$$(.ci/postgres.sh):$$(.ci/nginx.sh):$$(.ci/chromium.sh):$$PATH" $(VENV)/bin/python -m pytest -p no:cacheprovider; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

bench-quick: setup
	$(VENV)/bin/python benchmarks/robustness.py --quick

clean:
	rm -rf $(VENV) .fedgate-demo
