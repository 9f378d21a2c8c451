"""sft.py: UltraChat-format conversations to masked token files (`sft.py prepare`: every input kind, every malformed
kind, --strict, --holdout exact with malformed lines, colliding outputs, a lone surrogate, Ctrl-C at any moment,
every numeric option), the SFT loss (the mean over assistant tokens only: by hand on a tiny example, and exact in
float64 across 2 ranks with unequal assistant counts), and the SFT configs (the recipe's numbers, dry runs)."""
import gzip
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import sft  # noqa: E402
import settings  # noqa: E402
from model import Llama, LlamaConfig  # noqa: E402
from tokenizer import chat_ids  # noqa: E402
from tests.test_data import error_line, fuzz_numbers, tree  # noqa: E402

pytest.importorskip("llama_models", reason="pip install --no-deps llama-models (the Llama-3 tokenizer file)")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)


@pytest.fixture(scope="module")
def tok():
    return data.load_tokenizer()


def chat(*turns):
    """chat("user", "hi", "assistant", "yo") -> {"messages": [...]}"""
    return {"messages": [{"role": r, "content": c} for r, c in zip(turns[::2], turns[1::2])]}


GOOD = [chat("user", "What is 2 + 2?", "assistant", "4."),
        chat("system", "Answer briefly.", "user", "Name a prime.", "assistant", "7",
             "user", "Another one?", "assistant", "11, and then 13."),
        chat("user", "Spell 'cat' backwards.", "assistant", "tac"),
        chat("user", "Say something long.", "assistant", " ".join(["a long answer"] * 40))]
# (a line of the file, a word its one-line report must contain)
BAD = [('{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]}', "wizard"),
       ('{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "yo"}]}', "empty"),
       ('{"messages": [{"role": "user", "content": "hi"}]}', "assistant"),
       ('{"messages": "hi"}', "list"),
       ('{"messages": [{"role": "user", "content": "hi"}, ', "JSON"),
       ('{"text": "not a conversation"}', "messages")]


def write_jsonl(path, lines):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def documents(path):
    dom = data.open_domain(str(path))
    assert dom.has_mask
    return [(dom.tokens(i).tolist(), dom.mask(i).tolist()) for i in range(len(dom))]


def prepare_cli(*args, env=None):
    return subprocess.run([sys.executable, "sft.py", "prepare", *map(str, args)], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------------------------
# sft.py prepare


@pytest.mark.slow  # a command line in a subprocess
def test_prepare_writes_chat_format_documents_and_masks(tmp_path, tok):
    """Each valid conversation becomes one document equal to chat_ids (ids and mask); each malformed kind is
    reported once as FILE:LINE and skipped; the summary counts them."""
    lines = GOOD[:2] + [b for b, _ in BAD] + GOOD[2:]
    src = write_jsonl(tmp_path / "chat.jsonl", lines)
    proc = prepare_cli(tmp_path / "out", src)
    assert proc.returncode == 0, proc.stderr
    assert documents(tmp_path / "out") == [tuple(chat_ids(tok, c["messages"])) for c in GOOD]
    reports = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    assert len(reports) == len(BAD)
    for (bad, word), report, line_no in zip(BAD, reports, range(3, 3 + len(BAD))):
        assert report.startswith(f"skipped {src}:{line_no}: ") and word.lower() in report.lower(), report
    assert "4 conversations" in proc.stdout and f"skipped {len(BAD)} malformed" in proc.stdout
    meta = json.load(open(tmp_path / "out" / "part-00000.json"))
    assert meta["tokenizer_sha256"] == tok.sha256 and meta["has_mask"] and meta["documents"] == 4


@pytest.mark.slow  # a command line in a subprocess
def test_strict_stops_at_the_first_malformed_conversation_and_writes_nothing(tmp_path):
    for i, (bad, word) in enumerate(BAD):
        src = write_jsonl(tmp_path / f"chat{i}.jsonl", GOOD[:2] + [bad] + GOOD[2:])
        proc = prepare_cli(tmp_path / f"out{i}", src, "--strict") if i in (0, len(BAD) - 1) else None
        if proc is None:  # the CLI twice (it is slow to start), the function for the others
            with pytest.raises(data.DataError, match=f"{src}:3: .*--strict") as info:
                sft.prepare(str(tmp_path / f"out{i}"), [src], strict=True)
            assert "\n" not in str(info.value) and word.lower() in str(info.value).lower()
        else:
            assert proc.returncode != 0 and proc.stderr.count("\n") == 1, proc.stderr
            assert proc.stderr.startswith(f"error: {src}:3: ") and word.lower() in proc.stderr.lower()
        assert not os.path.exists(tmp_path / f"out{i}")


def test_gzip_input_and_system_message(tmp_path, tok):
    src = write_jsonl(tmp_path / "chat.jsonl.gz", GOOD)
    sft.prepare(str(tmp_path / "out"), [src], system="You are helpful.")
    expected = [chat_ids(tok, (c["messages"] if c["messages"][0]["role"] == "system" else
                               [{"role": "system", "content": "You are helpful."}] + c["messages"])) for c in GOOD]
    assert documents(tmp_path / "out") == [tuple(e) for e in expected]
    assert tok.decode(documents(tmp_path / "out")[0][0]).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>")


@pytest.mark.slow  # a command line in a subprocess
def test_holdout_splits_the_conversations(tmp_path, tok):
    convs = [chat("user", f"Question {i}?", "assistant", f"Answer {i}.") for i in range(20)]
    src = write_jsonl(tmp_path / "chat.jsonl", convs)
    proc = prepare_cli(tmp_path / "out", src, "--holdout", 5)
    assert proc.returncode == 0, proc.stderr
    train_docs, held = documents(tmp_path / "out"), documents(tmp_path / "out-heldout")
    assert len(train_docs) == 15 and len(held) == 5
    assert sorted(train_docs + held) == sorted(tuple(chat_ids(tok, c["messages"])) for c in convs)
    again = sft.prepare(str(tmp_path / "again"), [src], holdout=5, holdout_dir=str(tmp_path / "again-heldout"))
    assert documents(tmp_path / "again-heldout") == held and again["heldout"]["conversations"] == 5  # seeded
    proc = prepare_cli(tmp_path / "x", src, "--holdout", 20)
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "only 20 usable conversations" in proc.stderr


@pytest.mark.slow  # a command line in a subprocess
def test_parquet_reads_or_says_what_to_install(tmp_path, tok):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path = tmp_path / "chat.parquet"
        path.write_bytes(b"PAR1")
        proc = prepare_cli(tmp_path / "out", path)
        assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "pip install pyarrow" in proc.stderr
        assert not os.path.exists(tmp_path / "out")
        return
    rows = GOOD + [chat("user", "hi")]  # the last row has no assistant turn
    pq.write_table(pa.table({"prompt": ["x"] * len(rows), "messages": [r["messages"] for r in rows]}),
                   tmp_path / "chat.parquet")
    skipped = sft.prepare(str(tmp_path / "out"), [str(tmp_path / "chat.parquet")])["skipped"]
    assert documents(tmp_path / "out") == [tuple(chat_ids(tok, c["messages"])) for c in GOOD] and skipped == 1


@pytest.mark.slow  # a command line in a subprocess
def test_hub_dataset_offline_is_one_line(tmp_path):
    env = dict(ENV, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = prepare_cli(tmp_path / "out", "HuggingFaceH4/ultrachat_200k", env=env)
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: HuggingFaceH4/ultrachat_200k: could not fetch split 'train_sft'")
    assert not os.path.exists(tmp_path / "out")
    proc = prepare_cli(tmp_path / "out", tmp_path / "missing.jsonl")
    assert proc.returncode != 0 and "no such file" in proc.stderr and not os.path.exists(tmp_path / "out")


def test_hub_dataset_fetches_the_splits_parquet_files(tmp_path, monkeypatch):
    """A hub id (not a local path) is fetched as a dataset repo, only the split's parquet files: the patterns match
    ultrachat_200k's real file names for train_sft and nothing of its other splits."""
    import fnmatch
    import huggingface_hub
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        (tmp_path / "snap" / "data").mkdir(parents=True)
        (tmp_path / "snap" / "data" / "train_sft-00000-of-00003-a3ecf92756993583.parquet").write_bytes(b"PAR1")
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    files = sft.input_files(["HuggingFaceH4/ultrachat_200k"], "train_sft")
    assert files == [str(tmp_path / "snap" / "data" / "train_sft-00000-of-00003-a3ecf92756993583.parquet")]
    (repo_id, kwargs), = calls
    assert repo_id == "HuggingFaceH4/ultrachat_200k" and kwargs["repo_type"] == "dataset"
    matches = lambda name: any(fnmatch.fnmatch(name, p) for p in kwargs["allow_patterns"])
    assert matches("data/train_sft-00000-of-00003-a3ecf92756993583.parquet")
    assert not any(matches(f"data/{s}-00000-of-00001-0a1b.parquet") for s in ("test_sft", "train_gen", "test_gen"))


@pytest.mark.slow  # a command line in a subprocess
def test_ctrl_c_leaves_nothing_and_exits_130(tmp_path):
    src = write_jsonl(tmp_path / "chat.jsonl", GOOD * 200)
    script = (f"import sys; sys.path.insert(0, {ROOT!r}); import sft\n"
              "real, n = sft.chat_ids, [0]\n"
              "def interrupted(*a, **k):\n"
              "    n[0] += 1\n"
              "    if n[0] == 600: raise KeyboardInterrupt\n"  # in the third batch: two are already written
              "    return real(*a, **k)\n"
              "sft.chat_ids = interrupted\n"
              f"sft.main(['prepare', {str(tmp_path / 'out')!r}, {src!r}, '--threads', '1'])\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 130 and proc.stderr.count("\n") == 1 and "interrupted" in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "out")


def test_holdout_is_exact_with_malformed_lines_or_says_why_not(tmp_path, tok):
    """Malformed lines are skipped before the held-out ones are drawn: --holdout 5 holds out exactly 5 (before,
    a malformed line drawn for the held-out set silently made it smaller)."""
    convs = [chat("user", f"Question {i}?", "assistant", f"Answer {i}.") for i in range(12)]
    src = write_jsonl(tmp_path / "chat.jsonl", [x for i, c in enumerate(convs) for x in (c, BAD[i % len(BAD)][0])])
    for seed in range(4):
        out = tmp_path / f"out{seed}"
        r = sft.prepare(str(out), [src], holdout=5, seed=seed)
        assert r["heldout"]["conversations"] == 5 and r["train"]["conversations"] == 7 and r["skipped"] == 12
        assert sorted(documents(out) + documents(f"{out}-heldout")) == sorted(
            tuple(chat_ids(tok, c["messages"])) for c in convs)
    with pytest.raises(data.DataError, match="--holdout 12: the input has only 12 usable conversations"):
        sft.prepare(str(tmp_path / "x"), [src], holdout=12)
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "x-heldout")


def test_a_lone_surrogate_is_refused_as_tokenize_refuses_it(tmp_path, tok):
    """JSON's "\\ud800" without its pair: tokenize refuses such a document; prepare now refuses such a
    conversation the same way instead of training on U+FFFD."""
    lone = '{"messages": [{"role": "user", "content": "a lone \\ud800 here"}, {"role": "assistant", "content": "ok"}]}'
    src = write_jsonl(tmp_path / "chat.jsonl", GOOD[:1] + [lone])
    r = sft.prepare(str(tmp_path / "out"), [src])
    assert r["skipped"] == 1 and documents(tmp_path / "out") == [tuple(chat_ids(tok, GOOD[0]["messages"]))]
    with pytest.raises(data.DataError, match=r":2: message 0 \(user\): invalid Unicode .*--strict"):
        sft.prepare(str(tmp_path / "strict"), [src], strict=True)


@pytest.mark.slow  # command lines in subprocesses
def test_outputs_that_collide_are_refused_and_nothing_written_changes(tmp_path):
    """--holdout-dir OUT (two writers on one directory: before, exit 0 with a domain whose .bin/.idx/.json
    disagreed), an output that is one of the inputs, and a held-out directory that already holds a domain."""
    src = write_jsonl(tmp_path / "chat.jsonl", [chat("user", f"Q{i}?", "assistant", f"A{i}.") for i in range(20)])
    sft.prepare(str(tmp_path / "old"), [src])
    cases = [(["out", src, "--holdout", "10", "--holdout-dir", "out"], "--holdout-dir out is the output out itself"),
             (["out", src, "--holdout", "10", "--holdout-dir", "./out/"], "--holdout-dir ./out/ is the output out"),
             ([src, src], f"{src}: is also an input"),
             (["out", src, "--holdout", "3", "--holdout-dir", "old"], "old already has part-*.json shards")]
    for args, message in cases:
        before = tree(tmp_path)
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "sft.py"), "prepare", *args], cwd=tmp_path,
                              env=ENV, capture_output=True, text=True, timeout=300)
        line = error_line(proc)
        assert message in line, (args, line)
        assert tree(tmp_path) == before, args


@pytest.mark.slow  # command lines in subprocesses, interrupted
@pytest.mark.parametrize("delay", [0.1, 0.3, 1.0, 2.0])
def test_ctrl_c_in_the_first_seconds_is_one_line_and_130(tmp_path, delay):
    """While the modules import, and then while prepare runs: one line, exit 130, nothing written. (Not in the
    first ~30 ms after exec: Python's own start-up, before the first line of sft.py, is out of any script's reach;
    from that first line on, SIGINT is blocked until its handler is in place.)"""
    src = write_jsonl(tmp_path / "chat.jsonl", GOOD * 30000)  # still preparing at 2 s on an idle machine
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sft.py"), "prepare", str(tmp_path / "out"), src],
                            env=ENV, stderr=subprocess.PIPE, text=True)
    started = time.time()  # from the exec of sft.py: before it a signal hits the forked test process, not sft.py
    while b"sft.py" not in open(f"/proc/{proc.pid}/cmdline", "rb").read() and time.time() - started < 30:
        time.sleep(0.005)
    time.sleep(delay)
    assert proc.poll() is None, "prepare finished before the signal: give it more work"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    line = error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), code=130)
    assert "interrupted" in line and not os.path.exists(tmp_path / "out"), err


def test_every_numeric_option_of_prepare_refuses_0_minus_1_and_a_word(tmp_path, capsys):
    base = {(): [str(tmp_path / "out"), str(tmp_path / "missing.jsonl")]}
    valid = {((), "--holdout"): {"0"}, ((), "--seed"): {"0"}}
    cases, options = fuzz_numbers(sft.prepare_main, sft.prepare_parser(), base, valid, capsys)
    assert {o for _, o in options} == {"--holdout", "--seed", "--threads"} and cases == 9
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# the loss: assistant tokens only


def test_loss_by_hand_on_a_tiny_conversation(tmp_path, tok):
    """One conversation whose answer is two tokens: exactly three labels (the two answer tokens and <|eot_id|>,
    each predicted by the token before it), and the model's loss is their mean negative log-softmax by hand."""
    s = tok.special_tokens
    answer = tok.encode(" Hello there")
    assert len(answer) == 2
    ids = ([s["<|begin_of_text|>"], s["<|start_header_id|>"]] + tok.encode("user") + [s["<|end_header_id|>"]]
           + tok.encode("\n\n") + tok.encode("Hi") + [s["<|eot_id|>"], s["<|start_header_id|>"]]
           + tok.encode("assistant") + [s["<|end_header_id|>"]] + tok.encode("\n\n") + answer + [s["<|eot_id|>"]])
    conv = chat("user", "Hi", "assistant", " Hello there")
    assert list(chat_ids(tok, conv["messages"])[0]) == ids
    sft.prepare(str(tmp_path / "one"), [write_jsonl(tmp_path / "one.jsonl", [conv])])
    seq_len = len(ids) + 3
    mix = data.Mixture([{"path": str(tmp_path / "one"), "proportion": 1.0, "length": seq_len, "mode": "sft"}], seq_len)
    seq = mix.sequence(0)
    assert seq.input_ids[:len(ids)].tolist() == ids
    labelled = np.flatnonzero(seq.labels != -100).tolist()
    assert labelled == [len(ids) - 4, len(ids) - 3, len(ids) - 2]
    assert seq.labels[labelled].tolist() == answer + [s["<|eot_id|>"]]

    torch.manual_seed(0)
    model = Llama(LlamaConfig.tiny(num_hidden_layers=1)).double()
    x, cu = torch.as_tensor(seq.input_ids), torch.as_tensor(seq.cu_seqlens)
    with torch.no_grad():
        logits = model(x, cu_seqlens=cu).tolist()
        loss_sum, count = model(x, cu_seqlens=cu, labels=torch.as_tensor(seq.labels))
    by_hand = 0.0
    for i in labelled:
        row, top = logits[i], max(logits[i])
        by_hand += top + math.log(math.fsum(math.exp(v - top) for v in row)) - row[seq.labels[i]]
    assert int(count) == 3
    assert abs(loss_sum.item() / 3 - by_hand / 3) <= 1e-10


def expected_labels(seq, conversations):
    """Labels built without data.py: each segment is a (possibly truncated) conversation, found by its ids; label i
    is token i+1 where that token's mask is 1; padding and segment ends predict nothing."""
    labels = np.full(len(seq.input_ids), -100)
    for a, b in zip(seq.cu_seqlens[:-1], seq.cu_seqlens[1:]):
        piece = seq.input_ids[a:b].tolist()
        match = [m for ids, m in conversations if ids[:len(piece)] == piece]
        if not match:  # padding: a run of one token id that is no conversation
            assert len(set(piece)) == 1
            continue
        for i in range(b - a - 1):
            if match[0][i + 1]:
                labels[a + i] = piece[i + 1]
    return labels


@pytest.mark.slow
def test_sft_loss_is_exact_across_ranks(tmp_path, tok):
    """2 ranks (torchrun, gloo, FSDP2, float64) with unequal assistant-token counts give the mean over the assistant
    tokens of the whole step, and its gradients, as one F.cross_entropy over those labels (<= 1e-10)."""
    rng = np.random.default_rng(3)
    words = "the of a long short answer question model token one two three".split()
    convs = []
    for i in range(24):
        turns = []
        for _ in range(int(rng.integers(1, 3))):
            turns += ["user", " ".join(rng.choice(words, int(rng.integers(2, 12)))),
                      "assistant", " ".join(rng.choice(words, int(rng.integers(1, 30 if i % 3 else 3))))]
        convs.append(chat(*turns))
    sft.prepare(str(tmp_path / "chat"), [write_jsonl(tmp_path / "chat.jsonl", convs)])
    reference = [chat_ids(tok, c["messages"]) for c in convs]
    mix = data.Mixture([{"path": str(tmp_path / "chat"), "proportion": 1.0, "length": 96, "mode": "sft"}], 96)
    batch = [mix.sequence(g) for g in range(4)]
    for seq in batch:
        assert (seq.labels == expected_labels(seq, reference)).all()  # only assistant tokens, nothing crossing
    counts = [int((s.labels != -100).sum()) for s in batch]
    assert counts[0] + counts[1] != counts[2] + counts[3], counts  # the two ranks hold unequal shares

    from tests.train_worker import VOCAB, config
    small = [tuple(torch.as_tensor(x) for x in (s.input_ids % VOCAB, np.where(s.labels < 0, -100, s.labels % VOCAB),
                                                 s.cu_seqlens)) for s in batch]  # the tiny model's vocabulary
    torch.save(small, tmp_path / "batch.pt")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "tests/sft_worker.py", str(tmp_path / "batch.pt"), str(tmp_path / "out.pt")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt", weights_only=True)

    cfg = config()
    torch.manual_seed(cfg["seed"])
    model = Llama(LlamaConfig.tiny(**cfg["model_overrides"])).double()
    logits = torch.cat([model(ids, cu_seqlens=cu) for ids, _, cu in small])
    labels = torch.cat([lab for _, lab, _ in small])
    ref_loss = F.cross_entropy(logits, labels, ignore_index=-100)  # the mean over assistant tokens
    ref_grads = dict(zip([n for n, _ in model.named_parameters()],
                         torch.autograd.grad(ref_loss, list(model.parameters()))))
    assert abs(result["loss"] - ref_loss.item()) <= 1e-10
    assert result["grads"].keys() == ref_grads.keys()
    for name, grad in result["grads"].items():
        assert (grad - ref_grads[name]).abs().max() <= 1e-10, name


# ---------------------------------------------------------------------------------------------------------------
# the configs


@pytest.fixture(scope="module")
def chat_domain(tmp_path_factory):
    """Real text as conversations: questions about json/email functions answered by their docstrings."""
    import email.utils
    import inspect
    import json as json_module
    root = tmp_path_factory.mktemp("sft")
    convs = [chat("user", f"What does {name} do?", "assistant", inspect.getdoc(fn))
             for module in (json_module, email.utils, os.path, shutil)
             for name, fn in sorted(vars(module).items())
             if inspect.isfunction(fn) and not name.startswith("_") and inspect.getdoc(fn)]
    src = write_jsonl(root / "chat.jsonl", convs)
    sft.prepare(str(root / "chat"), [src], holdout=10, holdout_dir=str(root / "chat-heldout"))
    return root


def test_recipe_config_has_the_papers_numbers(tmp_path, chat_domain):
    cfg = settings.load_config([os.path.join(ROOT, "configs", "sft_ultrachat.py")])
    assert (cfg["seq_len"], cfg["tokens_per_step"], cfg["max_steps"], cfg["sp_size"], cfg["rope_theta"]) == \
        (65536, 4 * 2**20, 250, 1, None)
    assert (cfg["lr"], cfg["min_lr"], cfg["warmup_fraction"], cfg["weight_decay"], cfg["grad_clip"],
            cfg["beta1"], cfg["beta2"]) == (2e-5, 2e-6, 0.05, 0.1, 1.0, 0.9, 0.95)
    assert cfg["mixture"] == [{"path": "ultrachat", "proportion": 1.0, "length": 65536, "mode": "sft"}]
    assert cfg["init_from"] == "runs/prolong-512k/step_0002500" and not cfg["load_optimizer"]
    assert cfg["allow_repeat"] and cfg["activation_checkpointing"] and cfg["compute_dtype"] == "bfloat16"
    shutil.copytree(chat_domain / "chat", tmp_path / "ultrachat")
    for gpus in (8, 64):
        dp, accumulation = settings.validate(dict(cfg, data_root=str(tmp_path)), gpus)
        assert dp * accumulation * 65536 == 4 * 2**20


DRY_RUN = """
exec(open({config!r}).read())
# scaled down: a tiny fresh model, short sequences, one step (or two)
init_from, model, model_overrides = None, "tiny", {{"num_hidden_layers": 1}}
seq_len, tokens_per_step, max_steps, compute_dtype, activation_checkpointing = 256, 512, {steps}, "float32", False
mixture = [dict(path="chat", proportion=1.0, length=256, mode="sft")]
val_mixture = [dict(path="chat-heldout", proportion=1.0, length=256, mode="sft")]
val_sequences = 2
data_root, out_dir = {root!r}, {out!r}
"""


@pytest.mark.slow
@pytest.mark.parametrize("name,steps", [("demo_sft", 2), ("sft_ultrachat", 1)])
def test_sft_configs_dry_run(tmp_path, chat_domain, name, steps):
    """`python sft.py CONFIG` is train.py's loop: it validates before and after and writes a checkpoint."""
    dry = tmp_path / "dry.py"
    dry.write_text(DRY_RUN.format(config=os.path.join(ROOT, "configs", f"{name}.py"), root=str(chat_domain),
                                  out=str(tmp_path / "run"), steps=steps))
    proc = subprocess.run([sys.executable, "sft.py", str(dry)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"step      {steps}/{steps}" in proc.stdout and proc.stdout.count("validation loss") == 2
    ckpt = tmp_path / "run" / f"step_{steps:07d}"
    assert os.path.exists(ckpt / "model.safetensors")
    # a chat model stops at <|eot_id|>: its generation_config says so, as Llama-3 Instruct's does, and
    # evaluate.py's --chat auto reads it
    assert json.loads((ckpt / "generation_config.json").read_text())["eos_token_id"] == [128001, 128009]
    val = [json.loads(line)["val_loss"] for line in open(tmp_path / "run" / "metrics.jsonl") if "val_loss" in line]
    assert len(val) == 2 and all(math.isfinite(v) for v in val)


@pytest.mark.slow  # a command line in a subprocess
def test_sft_without_arguments_prints_usage():
    proc = subprocess.run([sys.executable, "sft.py"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "sft.py prepare OUT INPUT" in proc.stdout
