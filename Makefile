# Two commands on a fresh machine: `make demo` and `make test`. Both create (or reuse) a virtual environment.
# CPU machines get torch 2.13.0 (a CPU build); on GPU machines see README.md for the CUDA install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -r requirements.txt -r requirements-test.txt
	# the real Llama-3 tokenizer.model ships in this package; its own dependencies are not needed
	$(PY) -m pip install -q --no-deps llama-models==0.3.0
	touch $@

demo: venv
	$(PY) model.py

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_data runs
