"""Sharded checkpoints (checkpoint.py) through train.py with real torchrun/gloo groups: exact resume on
another world size in float64, the HF directory next to the sharded state, export, stage hand-off, and every
checkpoint error a user can cause, each one clear line through the command line.

Most runs here use test_train's `byte_domains`: the same stdlib text as its `domains`, tokenised byte by
byte (train_worker.byte_tokenizer), so the model's vocabulary is 512 instead of Llama-3's 128,256 and each run
costs seconds less; what is checked (resharding, files, errors) does not depend on the vocabulary.
`trained` is one such run with two checkpoints, shared by the tests that damage a copy of it. An error whose
command-line path another case already takes is checked by calling the function that raises it."""
import json
import os
import shutil
import signal
import subprocess
import sys
import types

import pytest
import torch

# domains and byte_domains are fixtures
from tests.test_train import (ENV, ROOT, byte_domains, domains, metrics, run, run_together,  # noqa: F401
                              tiny_config)
import checkpoint  # noqa: E402
import data  # noqa: E402
from model import Llama, LlamaConfig  # noqa: E402

pytestmark = pytest.mark.slow


def small_config(tmp_path, byte_domains, model_overrides=None, **overrides):
    """test_train's byte_config (its tokenizer, a 1-layer model of 512 ids), with `model_overrides` added to
    that model's rather than replacing them."""
    return tiny_config(tmp_path, byte_domains, tokenizer=str(byte_domains / "tokenizer"),
                       model_overrides={"num_hidden_layers": 1, "vocab_size": 512, **(model_overrides or {})},
                       **overrides)


# `trained`'s settings: the model preset says 64 positions, the run trains at seq_len 128
TRAINED = dict(checkpoint_interval=2, max_steps=4, model_overrides={"max_position_embeddings": 64})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, byte_domains):
    """A 4-step run checkpointed at steps 2 and 4; a test copies it (use_trained) before damaging it."""
    where = tmp_path_factory.mktemp("trained")
    run(["train.py", small_config(where, byte_domains, **TRAINED)])
    steps = sorted(d for d in os.listdir(where / "run") if d.startswith("step_"))
    assert steps == ["step_0000002", "step_0000004"]
    return where / "run"


def use_trained(tmp_path, byte_domains, trained):
    """A copy of `trained` as tmp_path/run and a config whose out_dir it is."""
    config = small_config(tmp_path, byte_domains, **TRAINED)
    shutil.copytree(trained, tmp_path / "run")
    return config, tmp_path / "run"


def in_one_line(call, *fragments):
    """A CheckpointError from a direct call: one line holding every fragment, as train.py prints it after
    'error: ' (one case of each such error also goes through the command line)."""
    with pytest.raises(checkpoint.CheckpointError) as caught:
        call()
    err = str(caught.value)
    assert "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in proc.stderr
    return err


def weights(path):
    return Llama.from_pretrained(str(path), dtype=torch.float64).state_dict()


def optimizer_state(step_dir, tmp_path):
    """A checkpoint's sharded optimizer state, gathered by DCP's own converter (not by our loader)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    out = tmp_path / f"{os.path.basename(step_dir)}-optim.pt"
    dcp_to_torch_save(str(step_dir / "train_state"), str(out))
    return torch.load(out, weights_only=False)["optim"]["state"]


# ----------------------------------------------------------------------------------------------------------


def test_resume_on_fewer_ranks_is_exact_in_float64(tmp_path, byte_domains):
    """4 ranks train 4 steps; the step-2 checkpoint resumed on 2 ranks gives the same losses and weights."""
    settings = dict(param_dtype="float64", compute_dtype="float64", tokens_per_step=512, max_steps=4,
                    checkpoint_interval=2, keep_checkpoints=3)
    straight = small_config(tmp_path / "a", byte_domains, **settings)
    run(["train.py", straight], nproc=4)
    a = tmp_path / "a" / "run"
    # every rank wrote its own shard file of the sharded state
    assert len([f for f in os.listdir(a / "step_0000002" / "train_state") if f.endswith(".distcp")]) == 4

    resumed = small_config(tmp_path / "b", byte_domains, **settings)
    b = tmp_path / "b" / "run"
    os.makedirs(b)
    shutil.copytree(a / "step_0000002", b / "step_0000002")  # as if the run had been killed after step 2
    (b / "latest").write_text("step_0000002\n")
    proc = run(["train.py", resumed, "--resume=True"], nproc=2)
    assert "saved by 4 ranks, now 2" in proc.stdout

    loss_a = [m["loss"] for m in metrics(a) if "loss" in m][2:]
    loss_b = [m["loss"] for m in metrics(b) if "loss" in m]
    assert len(loss_b) == 2 and max(abs(x - y) for x, y in zip(loss_a, loss_b)) < 1e-12, (loss_a, loss_b)
    final_a, final_b = weights(a / "step_0000004"), weights(b / "step_0000004")
    assert all(final_a[k].dtype == torch.float64 for k in final_a)
    assert max((final_a[k] - final_b[k]).abs().max().item() for k in final_a) < 1e-12
    # the optimizer moments came back too (a resume that dropped them would change the weights above as well)
    state_a = optimizer_state(a / "step_0000004", tmp_path)
    state_b = optimizer_state(b / "step_0000004", tmp_path)
    for name in state_a:
        assert state_a[name]["exp_avg_sq"].dtype == torch.float64
        assert torch.allclose(state_a[name]["exp_avg_sq"], state_b[name]["exp_avg_sq"], rtol=1e-10, atol=0)
        assert int(state_b[name]["step"]) == 4


def test_hf_directory_loads_in_transformers_and_export_writes_the_same(tmp_path, byte_domains, trained):
    transformers = pytest.importorskip("transformers")
    step = trained / "step_0000004"
    config = json.load(open(step / "config.json"))
    assert config["max_position_embeddings"] == 128  # trained at seq_len 128, though the preset said 64
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(step), dtype=torch.float32)
    ours = Llama.from_pretrained(str(step))
    ids = torch.randint(0, 512, (1, 50))
    assert torch.allclose(hf(ids).logits[0], ours(ids[0]), atol=1e-4)

    without = small_config(tmp_path / "b", byte_domains, **TRAINED, hf_weights=False)  # `trained` again, bare
    run(["train.py", without])
    bare = tmp_path / "b" / "run" / "step_0000004"
    assert not any(f.endswith(".safetensors") for f in os.listdir(bare))
    exported = tmp_path / "exported"  # the export, and the bare checkpoint refused as init_from, at once
    from_bare = ["train.py", without, f"--out_dir={tmp_path / 'c'}", f"--init_from={bare}"]
    proc, _ = run_together((from_bare, 1, False), (["checkpoint.py", "export", str(bare), str(exported)],))
    one_line_error(proc, "no *.safetensors", "checkpoint.py export")
    ref, got = weights(step), weights(exported)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert json.load(open(exported / "config.json"))["max_position_embeddings"] == 128
    assert os.path.exists(exported / "tokenizer.json")  # the run's tokenizer travels with the weights


def test_stage_hand_off_takes_weights_and_optimizer_and_restarts_the_schedule(tmp_path, byte_domains,
                                                                               trained):
    stage1 = trained / "step_0000004"  # 4 steps of stage 1
    second = small_config(tmp_path / "b", byte_domains, max_steps=2, init_from=str(stage1),
                          load_optimizer=True, rope_theta=2e6, seq_len=256, lr=1e-3, warmup_fraction=0.5,
                          mixture=[{"path": "code", "proportion": 1.0, "length": 256, "mode": "chunk"}])
    proc = run(["train.py", second])
    assert "optimizer state from" in proc.stdout and "RoPE base 2e+06" in proc.stdout
    stage2 = tmp_path / "b" / "run" / "step_0000002"
    config = json.load(open(stage2 / "config.json"))
    assert config["rope_theta"] == 2e6 and config["max_position_embeddings"] >= 256
    lrs = [m["lr"] for m in metrics(tmp_path / "b" / "run") if "lr" in m]
    assert lrs == [pytest.approx(1e-3)] * 2  # warmup of 1 step: the stage's own schedule, from its start
    # AdamW's step counter continues from stage 1 (4 steps) instead of restarting at 0
    state = optimizer_state(stage2, tmp_path)
    assert {int(s["step"]) for s in state.values()} == {6}
    # without load_optimizer the counter starts over
    fresh = small_config(tmp_path / "c", byte_domains, max_steps=2, init_from=str(stage1), seq_len=256,
                         mixture=[{"path": "code", "proportion": 1.0, "length": 256, "mode": "chunk"}])
    run(["train.py", fresh])
    state = optimizer_state(tmp_path / "c" / "run" / "step_0000002", tmp_path)
    assert {int(s["step"]) for s in state.values()} == {2}


# ----------------------------------------------------------------------------------------------------------
# errors: one line, exit 2, nothing lost


DISK_FULL = """
import errno, sys
sys.path.insert(0, {root!r})
import hf_checkpoint, train
real_save = hf_checkpoint.save_file
def full_disk(tensors, path, *args, **kwargs):
    if "step_0000004" in str(path):
        raise OSError(errno.ENOSPC, "No space left on device", path)
    return real_save(tensors, path, *args, **kwargs)
hf_checkpoint.save_file = full_disk
train.main([{config!r}])
"""


def test_full_disk_while_checkpointing(tmp_path, byte_domains):
    config = small_config(tmp_path, byte_domains, checkpoint_interval=2, max_steps=6)
    proc = subprocess.run([sys.executable, "-c", DISK_FULL.format(root=ROOT, config=config)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600)
    run_dir = tmp_path / "run"
    one_line_error(proc, f"no space left on {run_dir}", "step_0000002 is still the latest")
    assert not os.path.exists(run_dir / ".tmp-step_0000004")
    assert open(run_dir / "latest").read().strip() == "step_0000002"
    Llama.from_pretrained(str(run_dir / "step_0000002"))


REAL_FULL_DISK = [("train_state", 4 * 2**20), ("safetensors", None)]  # tmpfs sizes; None: set from the run


@pytest.mark.parametrize("part,size", REAL_FULL_DISK)
def test_really_full_disk_while_checkpointing(tmp_path, domains, part, size):
    """On a real full file system (a small tmpfs: needs the right to mount, else skipped): DCP's write fails
    as '[enforce fail ... unexpected pos]', safetensors' as its own error; both read 'no space left on
    <out_dir>', the temporary directory goes and nothing else changes."""
    mount = tmp_path / "disk"
    mount.mkdir()
    # weights 16.5M fp32 parameters: the sharded state (weights + 2 Adam moments) fits in 230 MiB, not the HF
    # half
    size = size or 230 * 2**20
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        config = tiny_config(tmp_path / "cfg", domains, max_steps=1, out_dir=str(mount / "run"))
        proc = run(["train.py", config], check=False)
        err = one_line_error(proc, f"no space left on {mount / 'run'}", "no earlier checkpoint exists")
        assert "enforce fail" not in err and "os error" not in err
        assert os.listdir(mount / "run") == ["metrics.jsonl"]  # the temporary directory went
    finally:
        subprocess.run(["umount", str(mount)])


def test_resume_refuses_a_damaged_state_in_one_line(tmp_path, byte_domains, trained):
    """train_state.json of the wrong shape, a damaged train_state/.metadata (without DCP's logged tracebacks);
    a metrics.jsonl whose last line a crash cut short resumes, without that line."""
    step = "step_0000004"
    good = json.loads((trained / step / "train_state.json").read_text())
    # through the command line, each on its own copy of the run, at once: one shape error, the cursor that
    # only the data stream can refuse, and a damaged .metadata
    cases = {"shape": ["'step' is missing"], "cursor": ["data cursor"], "metadata": [".metadata is damaged"]}
    copies = {name: use_trained(tmp_path / name, byte_domains, trained) for name in cases}
    (copies["shape"][1] / step / "train_state.json").write_text("{}")
    (copies["cursor"][1] / step / "train_state.json").write_text(json.dumps({**good, "data": {"seed": 0}}))
    metadata = copies["metadata"][1] / step / "train_state" / ".metadata"
    whole = metadata.read_bytes()
    metadata.write_bytes(whole[:10] + b"garbage!" + whole[18:])
    procs = run_together(*[(["train.py", config, "--resume=True", "--max_steps=6"], 1, False)
                           for config, _ in copies.values()])
    for (name, (_, run_dir)), proc in zip(copies.items(), procs):
        # one line each; for .metadata, DCP's two logged tracebacks are silenced
        one_line_error(proc, str(run_dir / step), *cases[name])
    # the other shapes, from the function train.py's resume calls first
    config, run_dir = copies["shape"]
    state_file = run_dir / step / "train_state.json"
    for bad, words in (([], ["a JSON list"]), ({**good, "data": None}, ["'data'"]),
                       ({k: v for k, v in good.items() if k != "data"}, ["'data' is missing"]),
                       ({**good, "rng": "abc"}, ["'rng'"]), ({**good, "rng": [300] * 5}, ["'rng'", "bytes"]),
                       ({**good, "step": "2"}, ["'step'"])):
        state_file.write_text(json.dumps(bad))
        in_one_line(lambda: checkpoint.read_train_state(str(run_dir / step)), str(run_dir / step), *words)
    # a model_config that is no model's: read_train_state passes it, the model check refuses it
    state_file.write_text(json.dumps({**good, "model_config": {"hidden_size": "64"}}))
    model = types.SimpleNamespace(config=LlamaConfig.from_hf_dict(good["model_config"]))
    in_one_line(lambda: checkpoint.check_same_model(checkpoint.read_train_state(str(run_dir / step)), model,
                                                    "float32", str(run_dir / step)), str(run_dir / step),
                "model_config")
    state_file.write_text(json.dumps(good))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 11.')  # killed while writing step 5's line
    run(["train.py", config, "--resume=True", "--max_steps=6"])
    assert [m["step"] for m in metrics(run_dir) if "loss" in m] == [1, 2, 3, 4, 5, 6]


def test_export_over_a_stale_sharded_checkpoint(tmp_path, byte_domains):
    """The stale index would win over a new single file (HF reads the index first): it and its shards go."""
    config = small_config(tmp_path, byte_domains, max_steps=1, hf_weights=False)
    run(["train.py", config])
    out = tmp_path / "out"
    stale = Llama(LlamaConfig.tiny(num_hidden_layers=1, vocab_size=512))  # the run's shapes, other weights
    from hf_checkpoint import save_safetensors
    save_safetensors(stale.state_dict(), str(out), max_shard_bytes=2**17)
    assert "model.safetensors.index.json" in os.listdir(out)
    proc = subprocess.run([sys.executable, "checkpoint.py", "export", str(tmp_path / "run" / "step_0000001"),
                           str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not any(f.startswith("model-") or f.endswith(".index.json") for f in os.listdir(out))
    exported = weights(out)
    assert not all(torch.equal(exported[k], stale.state_dict()[k].double()) for k in exported)
    mode = lambda name: os.stat(out / name).st_mode & 0o777  # noqa: E731
    assert mode("model.safetensors") == mode("config.json")


def test_damaged_checkpoints_and_resume_errors(tmp_path, byte_domains, trained):
    """Each command-line case on its own copy of the run, all at once."""
    copies = {name: use_trained(tmp_path / name, byte_domains, trained) for name in ("shard", "model",
                                                                                     "init")}
    # a truncated shard of the sharded state: which file, and how to fall back to the previous checkpoint
    train_state = copies["shard"][1] / "step_0000004" / "train_state"
    with open(train_state / next(f for f in os.listdir(train_state) if f.endswith(".distcp")), "r+b") as f:
        f.truncate(100)
    # a truncated model.safetensors used as the start of another run
    init_from = copies["init"][1] / "step_0000004"
    with open(init_from / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    resume = ["--resume=True", "--max_steps=6"]
    other_model = "--model_overrides={'num_hidden_layers': 2, 'vocab_size': 512}"
    shard, model, init = run_together(
        (["train.py", copies["shard"][0], *resume], 1, False),
        (["train.py", copies["model"][0], *resume, other_model], 1, False),
        (["train.py", copies["init"][0], f"--out_dir={tmp_path / 'other'}", f"--init_from={init_from}"], 1,
         False))
    one_line_error(shard, "cannot read", "train_state",
                   f"echo step_0000002 > {copies['shard'][1] / 'latest'}")
    one_line_error(model, "trained as another model", "num_hidden_layers 1 -> 2")
    one_line_error(init, f"init_from {init_from}", "model.safetensors")
    for name in ("shard", "model"):  # nothing lost by either
        assert open(copies[name][1] / "latest").read().strip() == "step_0000004"
    # train_state.json cut short, a `latest` that names nothing, master weights of another dtype: the
    # functions resuming calls (the cases above and test_resume_refuses_a_damaged_state_in_one_line take
    # their command-line path)
    run_dir = copies["model"][1]
    latest = run_dir / "step_0000004"
    state = (latest / "train_state.json").read_text()
    (latest / "train_state.json").write_text('{"step": 4, "da')
    in_one_line(lambda: checkpoint.read_train_state(str(latest)), "train_state.json", "echo step_0000002")
    (latest / "train_state.json").write_text(state)
    (run_dir / "latest").write_text("\x00garbage\n")
    in_one_line(lambda: checkpoint.latest(str(run_dir)), "not the name of a checkpoint directory",
                "echo step_0000004")
    model = types.SimpleNamespace(config=LlamaConfig.from_hf_dict(json.loads(state)["model_config"]))
    in_one_line(lambda: checkpoint.check_same_model(json.loads(state), model, "float64", str(latest)),
                "float32 master weights but param_dtype is float64")


def test_resume_without_a_checkpoint_says_so(tmp_path, byte_domains):
    proc = run(["train.py", small_config(tmp_path, byte_domains, max_steps=1), "--resume=True"])
    assert "no checkpoint in" in proc.stdout and "starts from step 0" in proc.stdout


def test_init_from_errors(tmp_path, domains):
    config = tiny_config(tmp_path, domains, max_steps=1)
    one_line_error(run(["train.py", config, f"--init_from={tmp_path / 'nothere'}"], check=False),
                   "no such checkpoint directory")
    (tmp_path / "empty").mkdir()
    one_line_error(run(["train.py", config, f"--init_from={tmp_path / 'empty'}"], check=False),
                   "no config.json")
    assert not os.path.exists(tmp_path / "run")
    # a checkpoint with a tensor the model does not have is refused, not silently dropped
    ckpt = tmp_path / "extra"
    Llama(LlamaConfig.tiny(num_hidden_layers=1)).save_pretrained(str(ckpt))
    data.load_tokenizer().save(str(ckpt))
    from safetensors.torch import load_file, save_file
    state = load_file(str(ckpt / "model.safetensors"))
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    save_file(state, str(ckpt / "model.safetensors"))
    one_line_error(run(["train.py", config, f"--init_from={ckpt}"], check=False), "q_norm")
    # a model whose vocabulary is smaller than the tokenizer's
    one_line_error(run(["train.py", config, "--model_overrides={'vocab_size': 1000}"], check=False),
                   "128256 ids but the model's vocabulary is 1000")


def test_config_file_errors(tmp_path, domains):
    config = tiny_config(tmp_path, domains)
    bad = tmp_path / "bad.py"
    bad.write_text(open(config).read() + "lr = 1e-3 +\n")
    one_line_error(run(["train.py", str(bad)], check=False), "bad.py line", "invalid syntax")
    bad.write_text(open(config).read() + "steps = max_steps * 2 + warmup\n")
    one_line_error(run(["train.py", str(bad)], check=False), "NameError", "warmup")
    misspelt = ["--mixture=[{'path': 'code', 'proportoin': 1.0, 'length': 128, 'mode': 'chunk'}]"]
    one_line_error(run(["train.py", config] + misspelt, check=False), "proportoin", "proportion")
    # the held-out mixture is checked before the model is built
    bad_val = ["--val_mixture=[{'path': 'val', 'proportion': 1.0, 'length': 4096, 'mode': 'pack'}]"]
    proc = run(["train.py", config] + bad_val, check=False)
    one_line_error(proc, "val_mixture")
    assert "model:" not in proc.stdout


def test_ctrl_c_while_training_is_one_line(tmp_path, domains):
    config = tiny_config(tmp_path, domains, checkpoint_interval=2, max_steps=200)
    proc = subprocess.Popen([sys.executable, "train.py", config], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "checkpoint saved" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().count("\n") == 0 and err.startswith("error: interrupted;"), err
    assert "--resume=True" in err, err
    assert "step_0000002" in err or "step_0000004" in err


def test_export_errors(tmp_path):
    def export(*args):
        return subprocess.run([sys.executable, "checkpoint.py", "export", *map(str, args)], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=120)
    proc = export(tmp_path / "nothere", tmp_path / "out")
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: no checkpoint directory at {tmp_path / 'nothere'}"
    (tmp_path / "hf_only").mkdir()
    proc = export(tmp_path / "hf_only", tmp_path / "out")
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot read")
    assert "train_state.json" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not os.path.exists(tmp_path / "out")
