# make test: create .venv if missing, (re)install the project only when pyproject.toml or
# constraints.txt changed, then run the default test suite (everything not marked slow).
# make demo: the same install step, then every paper's table and proxy experiment (claims and verdicts),
# results/README.md and the README's Results section.
# make speed: the same install step, then every configuration against its static export and MAC ratio into
# results/speed.{csv,md,png}, and the reports (results/README.md, README's Results section) refreshed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-slow lint install clean demo speed

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	$(PY) -m benchmarks.run_all --update-readme

speed: $(STAMP)
	$(PY) -m benchmarks.speed
	$(PY) -m benchmarks.report --update-readme --command "python -m benchmarks.run_all --update-readme"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
