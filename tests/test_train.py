"""train.py with real torchrun/gloo process groups on CPU: exact loss across world sizes, exact resume after
SIGKILL, crash-safe checkpoints, the recipe configs, and bad configs.

What a run checks that does not depend on the vocabulary (exact resume, crash-safe saves, held-out loss
falling) runs on `byte_domains`: the same real text tokenised one byte per token
(train_worker.byte_tokenizer) and a model of 512 ids instead of Llama-3's 128,256: its softmax and embedding
gradients make a CPU step ~40x cheaper. One run still trains with the real Llama-3 tokenizer
(test_fresh_run_refuses_to_overwrite_a_run checks that its checkpoint carries it). Launches that do not depend
on each other run at the same time: a python process imports torch on one core, and the machine has two."""
import concurrent.futures
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import parallel  # noqa: E402
import settings  # noqa: E402
import train  # noqa: E402
from model import Llama, LlamaConfig  # noqa: E402

pytest.importorskip("llama_models", reason="pip install --no-deps llama-models (the Llama-3 tokenizer file)")
STDLIB = sysconfig.get_paths()["stdlib"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)


def run(args, nproc=1, check=True, **kwargs):
    """train.py (or a worker) as a real process: torchrun when nproc > 1."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.run(launcher + args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
                          **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def run_together(*launches):
    """run(*launch) for each launch at once, in threads (subprocess waits without the GIL); their results in
    order."""
    with concurrent.futures.ThreadPoolExecutor(len(launches)) as pool:
        return [f.result() for f in [pool.submit(run, *launch) for launch in launches]]


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """Real text tokenised with the real Llama-3 tokenizer: stdlib modules for training, others held out."""
    root = tmp_path_factory.mktemp("domains")
    files = sorted(glob.glob(os.path.join(STDLIB, "json", "*.py"))
                   + glob.glob(os.path.join(STDLIB, "email", "*.py")))
    held_out = sorted(glob.glob(os.path.join(STDLIB, "http", "*.py")))
    for name, paths in (("code", files), ("val", held_out)):
        docs = [(p, [open(p, encoding="utf-8").read()]) for p in paths]
        data.tokenize(docs, str(root / name), threads=1)
    return root


@pytest.fixture(scope="module")
def byte_domains(tmp_path_factory):
    """`domains`' text, one token per byte: the same code/ and held-out val/ files, with their tokenizer (259
    ids) in tokenizer/."""
    pytest.importorskip("tokenizers")
    from tests.train_worker import byte_tokenizer
    root = tmp_path_factory.mktemp("byte_domains")
    tokenizer = byte_tokenizer(root / "tokenizer")
    files = sorted(glob.glob(os.path.join(STDLIB, "json", "*.py"))
                   + glob.glob(os.path.join(STDLIB, "email", "*.py")))
    held_out = sorted(glob.glob(os.path.join(STDLIB, "http", "*.py")))
    for name, paths in (("code", files), ("val", held_out)):
        docs = [(p, [open(p, encoding="utf-8").read()]) for p in paths]
        data.tokenize(docs, str(root / name), tokenizer=tokenizer, threads=1)
    return root


def byte_config(tmp_path, byte_domains, **overrides):
    """tiny_config on byte_domains: their tokenizer and a 1-layer model of 512 ids."""
    return tiny_config(tmp_path, byte_domains, tokenizer=str(byte_domains / "tokenizer"),
                       model_overrides={"num_hidden_layers": 1, "vocab_size": 512}, **overrides)


def tiny_config(tmp_path, domains, **overrides):
    settings = dict(out_dir=str(tmp_path / "run"), data_root=str(domains),
                    mixture=[{"path": "code", "proportion": 0.7, "length": 128, "mode": "chunk"},
                             {"path": "code", "proportion": 0.3, "length": 64, "mode": "pack"}],
                    seq_len=128, tokens_per_step=256, max_steps=10, lr=3e-3, min_lr=3e-4,
                    compute_dtype="float32", model_overrides={"num_hidden_layers": 1})
    settings.update(overrides)
    os.makedirs(tmp_path, exist_ok=True)
    path = tmp_path / "config.py"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    return str(path)


def metrics(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


# ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_loss_and_gradients_are_exact_for_any_world_size(tmp_path):
    """(1 rank, 4 micro-batches), (2, 2), (4, 1) and a plain single model all agree in float64."""
    worlds = (1, 2, 4)
    run_together(*[(["tests/train_worker.py", str(tmp_path / f"world{n}.pt")], n) for n in worlds])
    results = {n: torch.load(tmp_path / f"world{n}.pt", weights_only=True) for n in worlds}

    # reference: the same initial weights, no FSDP, no accumulation; one cross-entropy over every valid token
    from tests.train_worker import global_batch, config
    cfg = config()
    torch.manual_seed(cfg["seed"])
    model = Llama(LlamaConfig.tiny(**cfg["model_overrides"])).double()
    batch = global_batch()
    logits = torch.cat([model(s.input_ids, cu_seqlens=s.cu_seqlens) for s in batch])
    ref_loss = F.cross_entropy(logits, torch.cat([s.labels for s in batch]), ignore_index=-100)
    ref_grads = dict(zip([n for n, _ in model.named_parameters()],
                         torch.autograd.grad(ref_loss, list(model.parameters()))))

    for nproc, result in results.items():
        assert abs(result["loss"] - ref_loss.item()) <= 1e-10, nproc
        assert result["grads"].keys() == ref_grads.keys()
        for name, grad in result["grads"].items():
            assert (grad - ref_grads[name]).abs().max() <= 1e-10, (nproc, name)


def kill_tree(pid):
    """SIGKILL a process and all its descendants, and wait until they are gone. torchrun starts every worker
    in a session of its own (torch/distributed/elastic/multiprocessing/subprocess_handler), so killing the
    launcher's process group leaves the workers training on, racing the run that resumes."""
    parent_of = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent_of[int(entry)] = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass  # gone meanwhile
    tree, frontier = [pid], {pid}
    while frontier:
        frontier = {p for p, parent in parent_of.items() if parent in frontier}
        tree += sorted(frontier)
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(200):  # until each is gone or a zombie ('Z': dead, not yet reaped)
        alive = []
        for p in tree[1:]:
            try:
                alive += [p] if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z" else []
            except OSError:
                pass
        if not alive:
            return tree
        time.sleep(0.05)
    raise AssertionError(f"processes {alive} survived SIGKILL")


# train.py, except that every rank waits (to be killed) as step 8 begins: steps 6 and 7 are logged after the
# step-5 checkpoint, and nothing later is, however fast the steps
WAIT_AT_STEP_8 = """
import sys, time
sys.path.insert(0, {root!r})
import common, train
real_lr_at = train.lr_at
def lr_at(step, cfg):
    if step == 7:
        time.sleep(600)
    return real_lr_at(step, cfg)
train.lr_at = lr_at
common.exit_process(train.main)
"""


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path, byte_domains):
    """Killed (launcher and workers at once) after step 7, two steps past its step-5 checkpoint, a run resumed
    gives the losses and weights of one never killed: the killed run's metrics of steps 6-7 are dropped."""
    straight = byte_config(tmp_path / "a", byte_domains, checkpoint_interval=5)
    interrupted = byte_config(tmp_path / "b", byte_domains, checkpoint_interval=5)
    wrapper = tmp_path / "wait_at_step_8.py"
    wrapper.write_text(WAIT_AT_STEP_8.format(root=ROOT))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        a_done = pool.submit(run, ["train.py", straight], 2)  # the run never killed, meanwhile
        proc = subprocess.Popen(launcher + [str(wrapper), interrupted], cwd=ROOT, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        for line in proc.stdout:
            if line.startswith("step") and " 7/10 " in line:  # waiting at step 8: kill launcher and workers
                assert len(kill_tree(proc.pid)) >= 3  # the launcher and both workers
                break
        proc.wait()
        a_done.result()
    run_b = tmp_path / "b" / "run"
    assert open(run_b / "latest").read().strip() == "step_0000005"
    assert [m["step"] for m in metrics(run_b) if "loss" in m] == list(range(1, 8))
    run(["train.py", interrupted, "--resume=True"], nproc=2)

    a, b = metrics(tmp_path / "a" / "run"), metrics(run_b)
    assert [m["step"] for m in b if "loss" in m] == list(range(1, 11))  # the killed run's extra lines went
    assert [m["loss"] for m in a if "loss" in m] == [m["loss"] for m in b if "loss" in m]
    final_a = Llama.from_pretrained(str(tmp_path / "a" / "run" / "step_0000010")).state_dict()
    final_b = Llama.from_pretrained(str(run_b / "step_0000010")).state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


KILL_DURING_SAVE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import hf_checkpoint, train
real_save = hf_checkpoint.save_file
def save_then_die(tensors, path, *args, **kwargs):
    if "step_0000004" in str(path):  # the second checkpoint: sharded state written, HF weights half written
        with open(path, "wb") as f:
            f.write(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(tensors, path, *args, **kwargs)
hf_checkpoint.save_file = save_then_die
train.main([{config!r}])
"""


@pytest.mark.slow
def test_kill_while_saving_keeps_the_previous_checkpoint(tmp_path, byte_domains):
    config = byte_config(tmp_path, byte_domains, checkpoint_interval=2, max_steps=6)
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE.format(root=ROOT, config=config)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    run_dir = tmp_path / "run"
    assert open(run_dir / "latest").read().strip() == "step_0000002"
    assert os.path.exists(run_dir / ".tmp-step_0000004")  # the half-written one never got its final name
    Llama.from_pretrained(str(run_dir / "step_0000002"))  # the latest is whole

    proc = run(["train.py", config, "--resume=True"])
    assert "resumed from" in proc.stdout and "step_0000002" in proc.stdout
    assert not os.path.exists(run_dir / ".tmp-step_0000004")
    assert sorted(d for d in os.listdir(run_dir) if d.startswith("step_")) == ["step_0000004", "step_0000006"]
    assert [m["step"] for m in metrics(run_dir) if "loss" in m] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_training_lowers_held_out_loss(tmp_path, byte_domains):
    config = byte_config(tmp_path, byte_domains, max_steps=20, lr=5e-3, min_lr=5e-4, eval_interval=10,
                         val_sequences=4, tokens_per_step=512,
                         val_mixture=[{"path": "val", "proportion": 1.0, "length": 128, "mode": "pack"}])
    proc = run(["train.py", config])
    val = [m["val_loss"] for m in metrics(tmp_path / "run") if "val_loss" in m]
    assert len(val) == 3 and "ETA" in proc.stdout and "MFU" in proc.stdout
    # from ~ln(512) (a fresh model predicts uniformly), on unseen text
    assert abs(val[0] - math.log(512)) < 0.1 and val[0] > val[1] > val[2] and val[2] < val[0] - 1.5, val
    saved = data.load_tokenizer(str(tmp_path / "run" / "step_0000020"))  # the checkpoint has its tokenizer
    assert saved.sha256 == data.load_tokenizer(str(byte_domains / "tokenizer")).sha256


# ----------------------------------------------------------------------------------------------------------
# the recipe configs


def recipe_domains(root, config):
    """Each domain the recipe names, as a copy of one small real domain: the names and structure are the
    recipe's."""
    cfg = settings.load_config([config])
    source = None
    for comp in cfg["mixture"]:
        target = root / comp["path"]
        if not target.exists():
            if source is None:
                docs = [(p, [open(p, encoding="utf-8").read()]) for p in
                        sorted(glob.glob(os.path.join(STDLIB, "email", "*.py")))]
                data.tokenize(docs, str(root / "_source"), threads=1)
                source = root / "_source"
            shutil.copytree(source, target)
    return cfg


@pytest.mark.parametrize("name,seq_len,tokens,steps,theta,sp", [
    ("prolong_64k", 65536, 4 * 2**20, 5000, 8e6, 1), ("prolong_512k", 524288, 8 * 2**20, 2500, 1.28e8, 8)])
def test_recipe_configs_validate(tmp_path, name, seq_len, tokens, steps, theta, sp):
    config = os.path.join(ROOT, "configs", f"{name}.py")
    cfg = recipe_domains(tmp_path, config)
    assert (cfg["seq_len"], cfg["tokens_per_step"], cfg["max_steps"], cfg["rope_theta"], cfg["sp_size"]) == \
        (seq_len, tokens, steps, theta, sp)
    assert (cfg["lr"], cfg["min_lr"], cfg["warmup_fraction"], cfg["weight_decay"], cfg["grad_clip"]) == \
        (1e-5, 1e-6, 0.1, 0.1, 1.0)
    assert abs(sum(c["proportion"] for c in cfg["mixture"]) - 1) < 1e-9
    short = sum(c["proportion"] for c in cfg["mixture"] if c["mode"] == "pack")
    assert abs(short - 0.37) < 1e-9  # ShortMix
    cfg["data_root"] = str(tmp_path)
    for gpus in (8, 64):
        dp, accumulation = settings.validate(cfg, gpus)
        assert dp * accumulation * seq_len == tokens
    with pytest.raises(settings.ConfigError, match="sp_size 8 does not divide"):
        settings.validate(dict(cfg, sp_size=8), 12)


DRY_RUN = """
include({config!r})
# scaled down: the recipe's mixture, lengths and schedule divided by {scale}, a tiny fresh model, one step
init_from, load_optimizer, model, model_overrides = None, False, "tiny", {{"num_hidden_layers": 1}}
seq_len //= {scale}
mixture = [dict(c, length=c["length"] // {scale}) for c in mixture]
tokens_per_step //= {scale} * {fewer}
data_root, out_dir, max_steps, compute_dtype = {root!r}, {out!r}, 1, "float32"
sp_size, hf_weights = {sp}, False
"""


@pytest.mark.slow
@pytest.mark.parametrize("name,scale,fewer,sp", [("prolong_64k", 512, 8, 1), ("prolong_512k", 512, 8, 2)])
def test_recipe_config_dry_run(tmp_path, name, scale, fewer, sp):
    """The 512K stage runs with real sequence parallelism: 2 processes in one Ulysses group (8 in the
    recipe)."""
    config = os.path.join(ROOT, "configs", f"{name}.py")
    recipe_domains(tmp_path, config)
    dry = tmp_path / "dry.py"
    dry.write_text(DRY_RUN.format(config=config, scale=scale, fewer=fewer, root=str(tmp_path),
                                  out=str(tmp_path / "run"), sp=sp))
    proc = run(["train.py", str(dry), "--allow_repeat=True"], nproc=sp)
    assert f"(dp 1 x sp {sp})" in proc.stdout
    assert "step      1/1" in proc.stdout
    assert os.path.exists(tmp_path / "run" / "step_0000001" / "train_state.json")


# ----------------------------------------------------------------------------------------------------------
# configuration errors: one clear line, before any work, nothing written


def test_bad_settings_are_caught_before_any_work(tmp_path, domains):
    good = tiny_config(tmp_path, domains)
    cases = [(["--learning_rate=0.1"], "did you mean 'lr'"),
             (["--max_step=5"], "did you mean 'max_steps'"),
             (["--max_steps=ten"], "must be int"),
             (["--tokens_per_step=300"], "not a multiple of seq_len"),
             (["--mixture=[{'path': 'code', 'proportion': 0.5, 'length': 128, 'mode': 'chunk'}]"],
              "sum to 0.5"),
             (["--data_root=/nonexistent"], "not found"),
             (["--sp_size=3"], "sp_size 3 does not divide")]
    for overrides, message in cases:
        with pytest.raises(settings.ConfigError, match=message):
            cfg = settings.load_config([good] + overrides)
            settings.validate(cfg, 1 if "--sp_size=3" not in overrides else 2)
    proc = run(["train.py", good, "--learning_rate=0.1"], check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: unknown setting 'learning_rate'")
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_bad_settings_through_the_command_line(tmp_path, domains):
    """The issue's cases as a user types them: one `error:` line naming the setting, exit 2, nothing written
    (validation comes before the model, the data and the run directory). Every case through
    load_config + validate, the checks train.py makes first; one of each kind (a number's range, a choice,
    the disk) also through the command line, at once."""
    good = tiny_config(tmp_path, domains)
    (tmp_path / "afile").write_text("x")
    cases = (("--lr=-1", "'lr'"), ("--seq_len=0", "'seq_len'"), ("--sp_size=0", "'sp_size'"),
             ("--micro_batch_sequences=0", "'micro_batch_sequences'"), ("--log_interval=0", "'log_interval'"),
             ("--tokens_per_step=0", "'tokens_per_step'"), ("--min_lr=-5.0", "'min_lr'"),
             ("--compute_dtype=float33", "'compute_dtype'"), (f"--out_dir={tmp_path / 'afile'}", "is a file"),
             ("--out_dir=", "'out_dir'"))
    for override, word in cases:
        with pytest.raises(settings.ConfigError) as caught:
            settings.validate(settings.load_config([good, override]), 1)
        assert "\n" not in str(caught.value) and word in str(caught.value), (override, str(caught.value))
    assert not os.path.exists(tmp_path / "run")
    through_cli = [cases[0], cases[7], cases[8]]
    for (override, word), proc in zip(through_cli, run_together(*[(["train.py", good, o], 1, False)
                                                                  for o, _ in through_cli])):
        err = proc.stderr.strip()
        assert proc.returncode == 2 and err.count("\n") == 0 and err.startswith("error: ") and word in err, \
            (override, proc.returncode, proc.stderr[-2000:])
        assert "model:" not in proc.stdout and not os.path.exists(tmp_path / "run"), override


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_the_start_is_one_line_and_130(tmp_path, domains):
    """While torch imports, the process group starts, the data opens or the model builds: never a traceback,
    an ImportError, or an interrupt swallowed into a finished run."""
    config = tiny_config(tmp_path, domains, max_steps=50)
    for delay in (0.3, 0.8, 1.5, 2.5, 4.0):
        proc = subprocess.Popen([sys.executable, "train.py", config], cwd=ROOT, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (delay, proc.returncode, err[-2000:])
        assert err.strip().count("\n") == 0 and err.startswith("error: interrupted"), (delay, err[-2000:])
        shutil.rmtree(tmp_path / "run", ignore_errors=True)


@pytest.mark.slow
def test_fresh_run_refuses_to_overwrite_a_run(tmp_path, domains):
    config = tiny_config(tmp_path, domains, max_steps=1)
    run(["train.py", config])
    # the one run here with the real Llama-3 tokenizer: its checkpoint carries it
    saved = data.load_tokenizer(str(tmp_path / "run" / "step_0000001"))
    assert saved.sha256 == data.LLAMA3_SHA256
    before = sorted(os.listdir(tmp_path / "run"))
    proc = run(["train.py", config], check=False)
    assert proc.returncode == 2 and "resume=True" in proc.stderr
    assert sorted(os.listdir(tmp_path / "run")) == before


def test_learning_rate_schedule():
    """Linear warmup to lr, then a cosine (not linear) decay to min_lr, checked at exact points."""
    cfg = dict(settings.DEFAULTS, max_steps=110, lr=1e-5, min_lr=1e-6, warmup_fraction=1 / 11)
    lrs = [train.lr_at(s, cfg) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[4] == pytest.approx(5e-6) and lrs[9] == pytest.approx(1e-5)
    assert lrs[10] == pytest.approx(1e-5)  # decay starts after the 10 warmup steps
    # progress 1/4, 1/2, 3/4 and 1 of the decay: min + (max - min) (1 + cos(pi p)) / 2
    for step, expected in ((35, 1e-6 + 9e-6 * (1 + 2 ** -0.5) / 2), (60, 5.5e-6),
                           (85, 1e-6 + 9e-6 * (1 - 2 ** -0.5) / 2), (110, 1e-6)):
        assert lrs[step] == pytest.approx(expected, rel=1e-12), step


def test_train_step_clips_and_decays_only_matrices():
    """Two optimizer steps against AdamW written out by hand in float64: the gradient is clipped to grad_clip
    by its global norm, and weight decay touches matrices but not the RMSNorm weights."""
    import torch.distributed as dist
    from tests.train_worker import VOCAB, global_batch
    started = not dist.is_initialized()
    if started:
        parallel.init_distributed()
    try:
        torch.manual_seed(3)
        cfg = dict(settings.DEFAULTS, lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95)
        model = Llama(LlamaConfig.tiny(vocab_size=VOCAB, num_hidden_layers=2)).double()
        for p in model.parameters():  # norm weights away from 1, so that a decay of them would show
            if p.dim() == 1:
                p.data.uniform_(0.5, 1.5)
        ref = {n: p.detach().clone() for n, p in model.named_parameters()}
        m = {n: torch.zeros_like(p) for n, p in ref.items()}
        v = {n: torch.zeros_like(p) for n, p in ref.items()}
        optimizer = train.build_optimizer(model, cfg)
        batch = global_batch()
        for t, grad_clip in ((1, 0.05), (2, 1e9)):
            # reference gradient of the mean loss over all valid tokens, from a plain cross-entropy
            shadow = Llama(model.config).double()
            shadow.load_state_dict(ref)
            logits = torch.cat([shadow(s.input_ids, cu_seqlens=s.cu_seqlens) for s in batch])
            loss = F.cross_entropy(logits, torch.cat([s.labels for s in batch]), ignore_index=-100)
            grads = dict(zip(ref, torch.autograd.grad(loss, list(shadow.parameters()))))
            norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
            scale = min(1.0, grad_clip / (norm.item() + 1e-6))
            got_loss, got_norm = train.train_step(model, optimizer, train.micro_batches(batch, 1),
                                                  torch.device("cpu"), grad_clip)
            assert got_loss == pytest.approx(loss.item(), rel=1e-12)
            assert got_norm == pytest.approx(norm.item(), rel=1e-10)
            for n, p in ref.items():
                g = grads[n] * scale
                m[n] = 0.9 * m[n] + 0.1 * g
                v[n] = 0.95 * v[n] + 0.05 * g * g
                decay = 0.1 if p.dim() >= 2 else 0.0
                step = (m[n] / (1 - 0.9 ** t)) / ((v[n] / (1 - 0.95 ** t)).sqrt() + 1e-8)
                ref[n] = p * (1 - 1e-2 * decay) - 1e-2 * step
        assert scale == 1.0  # the second step was not clipped, the first was (norm >> 0.05)
        for n, p in model.named_parameters():
            assert (p.detach() - ref[n]).abs().max() < 1e-12, n
    finally:
        if started:
            dist.destroy_process_group()


def test_micro_batches_keep_every_sequence_and_order_by_squared_lengths():
    seqs = [data.Sequence(torch.arange(8) + 10 * i, torch.arange(8), torch.tensor(cu, dtype=torch.int32))
            for i, cu in enumerate([[0, 8], [0, 2, 4, 6, 8], [0, 4, 8], [0, 1, 8]])]
    batches = train.micro_batches(seqs, 2)
    # sums of squared document lengths: 8^2 + 4 * 2^2 = 80 and 2 * 4^2 + 1 + 7^2 = 82: the second goes first
    assert [b.cu_seqlens.tolist() for b in batches] == [[0, 4, 8, 9, 16], [0, 8, 10, 12, 14, 16]]
    assert sorted(torch.cat([b.input_ids for b in batches]).tolist()) == sorted(
        torch.cat([s.input_ids for s in seqs]).tolist())
