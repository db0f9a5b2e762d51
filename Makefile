# searle-study: the README's two commands.
#   make book   set-up (idempotent), every notebook on the embedded preset, then the book -> _build/html/index.html
#   make test   set-up (idempotent), then the full test suite (this is what .ci/run calls)
# Other targets: make setup | notebooks | check-book | clean. PRESET=tiny make book builds the quick book
# (its results go to _build/tiny/results: only the embedded preset's results are committed).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= embedded
PYTEST_ARGS ?=
OUT_ARG := $(if $(filter tiny,$(PRESET)),-p out_dir=_build/tiny/results,)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: book test setup notebooks check-book clean

book: notebooks
	$(PY) scripts/build_book.py --preset $(PRESET)

notebooks: setup
	$(PY) scripts/run_notebooks.py --preset $(PRESET) $(OUT_ARG)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

setup:
	bash scripts/setup.sh

# Open every page of the built embedded book in headless Chromium (the test suite checks the tiny book).
check-book:
	SEARLE_BOOK_HTML=_build/html $(PY) -m pytest -q -p no:cacheprovider tests/test_book.py

clean:
	rm -rf _build book/runs
