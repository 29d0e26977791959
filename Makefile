# The two set-up commands are `make demo` and `make test`; everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The install compiles the gateway's hot modules with mypyc (setup.py; pure Python where there is no C compiler).
# A compiled module older than its source is never run (distillguard/_compiled.py); this rebuilds it.
BUILT := $(VENV)/.compiled
COMPILED_SRC = $(shell $(PYTHON) -c 'import runpy; print(" ".join("src/" + m.replace(".", "/") + ".py" for m in runpy.run_path("src/distillguard/_compiled.py")["COMPILED"]))')

.PHONY: demo fleet test lint typecheck bench clean install

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP) $(BUILT)

$(BUILT): src/distillguard/_compiled.py $(COMPILED_SRC) | $(STAMP)
	$(BIN)/python -c 'import runpy, sys; sys.exit(bool(runpy.run_path("src/distillguard/_compiled.py")["stale_modules"]()))' \
	  || $(BIN)/pip install -q --no-deps -e .
	touch $(BUILT)

install: $(STAMP) $(BUILT)

demo: $(STAMP) $(BUILT)
	$(BIN)/distillguard demo $(DEMO_ARGS)

# A local fleet from Debian packages (docs/deploy.md): haproxy, 3 gateways, Redis, PostgreSQL, the demo model.
fleet: $(STAMP) $(BUILT)
	$(BIN)/python -m distillguard.demo.fleet $(FLEET_ARGS)

test: $(STAMP) $(BUILT)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	@echo "see bench/README.md for each benchmark's command"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache spill distillguard.db*
	find src -name '*.so' -delete; rm -f src/distillguard/_compiled_sources.json
