"""evaluate.py: oracle / empty models through the runner, perplexity, lm-eval, and the CLI (the tasks' own
prompts, metrics and data: test_helmet.py)."""
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import evaluate as ev  # noqa: E402
import helmet as hm  # noqa: E402
import ruler  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "helmet")


@pytest.fixture(scope="module")
def tok():
    from data import load_tokenizer
    return load_tokenizer(None)  # the real Llama-3 tokenizer (llama-models package), offline


# ------------------------------------------------------------------------------------------------------------
# 3. an oracle model scores 100, a model that says nothing scores 0


class StubModel:
    """Answers from a table keyed by the exact prompt ids (an oracle), or says nothing."""
    def __init__(self, answers=None):
        self.answers, self.calls = answers or {}, []
        self.config = types.SimpleNamespace(eos_token_id=[128001, 128009], max_position_embeddings=8192)

    def generate(self, prompt_ids, max_new_tokens, **kw):
        self.calls.append((max_new_tokens, kw["stop_tokens"]))
        return self.answers.get(tuple(prompt_ids), [])


def oracle_text(task, rec):
    if task == "json_kv":
        return " " + rec["answer"]
    if task.startswith("ruler_"):
        return " " + ", ".join(rec["outputs"])
    if task.startswith("kilt_"):
        return " " + rec["answers"][0]
    return " " + " > ".join(sorted(rec["qrels"], key=lambda d: -rec["qrels"][d]))


def records_for(task, tok):
    if task in hm.SYNTHETIC:
        return ruler.synthetic_records(task, 1024, 6, tok, seed=1), 1024
    files = hm.helmet_files(task, 8192, FIXTURES)
    return hm.helmet_records(task, *files, samples=10, seed=1), 8192


@pytest.mark.parametrize("task", hm.SYNTHETIC + ["ruler_niah_mv@helmet", "json_kv@helmet", "kilt_nq",
                                                 "msmarco_rerank_psg"])
def test_oracle_scores_100_and_silence_scores_0(tok, task):
    task, _, helmet = task.partition("@")
    if helmet:
        records, length = hm.helmet_records(task, *hm.helmet_files(task, 8192, FIXTURES), 10, 1), 8192
    else:
        records, length = records_for(task, tok)
    gen = hm.TASKS[task][2]
    answers = {tuple(hm.fit_context(task, hm.prompt_fields(task, r), tok, length - gen)):
               tok.encode(oracle_text(task, r)) for r in records}
    assert len(answers) == len(records)
    oracle, silent = StubModel(answers), StubModel()
    metric = hm.TASKS[task][4]
    assert ev.summarize(ev.run_task(oracle, tok, task, records, length), metric)["score"] == 100.0
    assert ev.summarize(ev.run_task(silent, tok, task, records, length), metric)["score"] == 0.0
    newline = {tok.encode("\n")[0], tok.encode("\n\n")[0]}
    for max_new, stops in oracle.calls:
        assert max_new == gen and {tok.eos_id, tok.eot_id} <= set(stops)
        assert newline <= set(stops) if hm.TASKS[task][3] else not newline & set(stops)


def test_main_on_helmet_data_with_an_oracle(monkeypatch, tok, tmp_path, capsys):
    present = ["json_kv", "ruler_niah_mk_2", "ruler_niah_mv", "kilt_nq", "msmarco_rerank_psg"]
    answers = {}
    for task in present:
        gen = hm.TASKS[task][2]
        for r in hm.helmet_records(task, *hm.helmet_files(task, 8192, FIXTURES), 100, 42):
            prompt = hm.fit_context(task, hm.prompt_fields(task, r), tok, 8192 - gen)
            answers[tuple(prompt)] = tok.encode(oracle_text(task, r))
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: (StubModel(answers), tok))
    report = ev.main(["--ckpt", "hub/id", "--helmet-data", FIXTURES, "--lengths", "8k",
                      "--out", str(tmp_path / "r.json")])
    assert sorted(report["tasks"]) == sorted(present)
    assert all(report["tasks"][t][8192]["score"] == 100.0 for t in present)
    assert {s.split(" @")[0] for s in report["skipped"]} == set(hm.TASKS) - set(present)
    assert report["averages"]["Re-rank"][8192] == {"score": 100.0, "tasks": ["msmarco_rerank_psg"], "complete": True}
    assert report["averages"]["RAG"][8192]["complete"] is False
    out = capsys.readouterr().out
    assert "Re-rank (avg)" in out and "RAG (avg)" in out
    assert json.loads((tmp_path / "r.json").read_text())["tasks"]["kilt_nq"]["8192"]["score"] == 100.0


def test_summary_by_depth_and_category_averages():
    results = [{"depth": d, "m": v} for d, v in [(0.0, 1), (0.0, 0), (1.0, 1), (1.0, 1)]]
    s = ev.summarize(results, "m")
    assert s["score"] == 75.0 and s["by_depth"] == {"0.0": 50.0, "1.0": 100.0}
    scores = {"json_kv": {1024: 10.0}, "ruler_niah_mk_2": {1024: 20.0}, "ruler_niah_mk_3": {1024: 30.0},
              "ruler_niah_mv": {1024: 40.0, 2048: 50.0}, "ruler_vt": {1024: 99.0}, "kilt_nq": {1024: 60.0}}
    avg = hm.category_averages(scores)
    assert avg["Recall"][1024] == {"score": 25.0, "tasks": hm.CATEGORIES["Recall"], "complete": True}
    assert avg["Recall"][2048]["complete"] is False and avg["RAG"][1024]["score"] == 60.0
    assert hm.CATEGORIES["Recall"] == ["json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv"]

def test_heatmap_png(tmp_path):
    pytest.importorskip("matplotlib")
    by_length = {1024: {"by_depth": {"0.0": 100.0, "1.0": 50.0}}, 2048: {"by_depth": {"0.0": 0.0}}}
    path = ev.heatmap(by_length, str(tmp_path / "kv.png"))
    assert path and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

# ------------------------------------------------------------------------------------------------------------
# 5. perplexity by position equals the model's own loss on the same tokens


def write_domain(path, docs):
    from data import ShardWriter
    writer = ShardWriter(path, {"tokenizer": "test"})
    for d in docs:
        writer.add(d)
        writer.end_document()
    writer.commit()


def test_perplexity_by_position_equals_direct_loss(tmp_path):
    from model import Llama, LlamaConfig
    torch.manual_seed(0)
    model = Llama(LlamaConfig.tiny(vocab_size=300, max_position_embeddings=256)).eval()
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 300, n) for n in (200, 64, 37, 1, 300)]
    write_domain(str(tmp_path / "dom"), docs)
    length, buckets = 128, 4
    got = ev.perplexity_by_position(model, ev.read_documents(str(tmp_path / "dom"), None, 10, length), length, buckets)
    # reference: full logits, float64 log-softmax, per document; nll[p - 1] is the loss of the token at position p
    pos, nlls, halves = [], [], []
    with torch.no_grad():
        for d in docs:
            ids = torch.tensor(d[:length], dtype=torch.long)
            if len(ids) < 2:
                continue
            nll = -model(ids).double().log_softmax(-1)[:-1].gather(-1, ids[1:, None])[:, 0].numpy()
            pos.append(np.arange(1, len(ids)))
            nlls.append(nll)
            halves.append(nll[len(ids) // 2 - 1:])
    pos, nlls = np.concatenate(pos), np.concatenate(nlls)
    per_pos = [list(nlls[pos == p]) for p in range(length)]
    assert got["documents"] == 4 and got["tokens"] == sum(len(x) for x in per_pos)
    for row in got["buckets"]:
        lo, hi = row["positions"]
        ref = [x for p in range(lo, hi) for x in per_pos[p]]
        assert row["tokens"] == len(ref) and row["loss"] == pytest.approx(np.mean(ref), rel=1e-5)
    assert [r["positions"] for r in got["buckets"]] == [[0, 32], [32, 64], [64, 96], [96, 128]]
    assert got["second_half_loss"] == pytest.approx(np.concatenate(halves).mean(), rel=1e-5)
    assert got["loss"] == pytest.approx(np.mean([x for p in per_pos for x in p]), rel=1e-5)


def test_perplexity_of_a_text_file(tmp_path, tok):
    from model import Llama, LlamaConfig
    torch.manual_seed(0)
    model = Llama(LlamaConfig.tiny(vocab_size=128256)).eval()
    path = tmp_path / "t.txt"
    path.write_text("The grass is green. " * 80)
    docs = ev.read_documents(str(path), tok, 5, 64)  # a text file is cut into documents of 64 tokens, BOS first
    ids = tok.encode(path.read_text())
    assert [list(d) for d in docs] == [[tok.bos_id] + ids[i:i + 63] for i in range(0, len(ids), 63)][:5]
    got = ev.perplexity_by_position(model, docs, 64, 2)
    loss_sum = n_sum = 0
    with torch.no_grad():
        for d in docs:
            d = torch.tensor(d)
            loss, n = model(d, labels=torch.cat([d[1:], torch.tensor([-100])]))
            loss_sum, n_sum = loss_sum + float(loss), n_sum + int(n)
    assert got["loss"] == pytest.approx(loss_sum / n_sum, rel=1e-5) and got["tokens"] == n_sum == 5 * 63

# ------------------------------------------------------------------------------------------------------------
# lm-eval-harness: a clear skip without it; the adapter's log-likelihoods are the model's own


def test_lm_eval_missing_is_a_clear_skip(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import fails even where it is installed
    assert ev.run_lm_eval(None, None, ["hellaswag"]) is None
    assert "lm-eval-harness is not installed" in capsys.readouterr().err


def test_lm_eval_adapter_loglikelihood(tok):
    from model import Llama, LlamaConfig
    torch.manual_seed(0)
    model = Llama(LlamaConfig.tiny(vocab_size=128256, max_position_embeddings=64)).eval()
    lm = ev.lm_eval_adapter(model, tok, object)
    req = types.SimpleNamespace
    (lp, greedy), = lm.loglikelihood([req(args=("The sky is ", "blue"))])
    ids = [tok.bos_id] + tok.encode("The sky is blue")
    n_ctx = len([tok.bos_id] + tok.encode("The sky is"))
    with torch.no_grad():
        logp = model(torch.tensor(ids)).double().log_softmax(-1)
    ref = sum(float(logp[i - 1, ids[i]]) for i in range(n_ctx, len(ids)))
    assert lp == pytest.approx(ref, rel=1e-5) and isinstance(greedy, bool)
    text = "word " * 100  # longer than the 64-token window: disjoint windows
    (rolling,) = lm.loglikelihood_rolling([req(args=(text,))])
    ids = [tok.bos_id] + tok.encode(text)
    with torch.no_grad():
        ref = 0.0
        for s in range(1, len(ids), 63):
            chunk = ids[s - 1:s + 63]
            logp = model(torch.tensor(chunk[:-1])).double().log_softmax(-1)
            ref += sum(float(logp[j, chunk[j + 1]]) for j in range(len(chunk) - 1))
    assert rolling == pytest.approx(ref, rel=1e-5)

# ------------------------------------------------------------------------------------------------------------
# 6. the command line on a tiny random checkpoint with the real tokenizer


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tok):
    from model import Llama, LlamaConfig
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt")
    Llama(LlamaConfig.tiny(vocab_size=128256, max_position_embeddings=2048)).save_pretrained(str(path))
    tok.save(str(path))  # tokenizer.model beside the weights, as our checkpoints have it
    return path


@pytest.mark.slow
def test_cli_end_to_end(tiny_ckpt, tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("Call me Ishmael. Some years ago, never mind how long precisely, I went to sea. " * 30)
    out = tmp_path / "res.json"
    tasks = ["json_kv", "ruler_niah_mv"]  # two of the four Recall tasks: keeps the test fast, shows a partial average
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--ckpt", str(tiny_ckpt),
                           "--tasks", ",".join(tasks), "--lengths", "512,1024", "--samples", "1", "--ppl", str(text),
                           "--out", str(out), "--lm-eval", "hellaswag"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["task", "512", "1024"]
    for name in tasks + ["Recall"]:
        row = next(line.split() for line in lines if line.startswith(name))
        assert len(row) == 3 + (name == "Recall") and all(0 <= float(x) <= 100 for x in row[-2:])
    assert "averages over the tasks that ran only: Recall at 512: json_kv, ruler_niah_mv" in proc.stdout
    assert "second half of each document" in proc.stdout and "depth 0.0" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["tasks"]) == set(tasks)
    for task in tasks:
        for L in ("512", "1024"):
            r = report["tasks"][task][L]
            assert r["n"] == 1 and 0 <= r["score"] <= 100
            assert all(s["input_len"] + hm.TASKS[task][2] <= int(L) for s in r["samples"])
    assert report["perplexity"]["length"] == 1024 and report["perplexity"]["tokens"] > 500
    assert "lm-eval-harness is not installed" in proc.stderr or report["lm_eval"] is not None
    assert "matplotlib is not installed" in proc.stderr or os.path.exists(report["heatmap"])


def test_cli_missing_tokenizer_vocab_mismatch_and_unknown_task(tiny_ckpt, tmp_path, tok):
    from model import Llama, LlamaConfig
    bare = tmp_path / "bare"
    shutil.copytree(tiny_ckpt, bare)
    os.remove(bare / "tokenizer.model")
    with pytest.raises(SystemExit, match="(?s)no tokenizer for .*bare: .*pass --tokenizer SPEC"):  # a message,
        ev.main(["--ckpt", str(bare), "--lengths", "512", "--samples", "1", "--tasks", "json_kv"])  # no traceback
    (bare / "generation_config.json").write_text('{"eos_token_id": [128001, 128008, 128009]}')
    model, tok2 = ev.load_checkpoint(str(bare), tokenizer="llama3")  # the package's Llama-3 tokenizer instead
    assert tok2.encode("hello world") == tok.encode("hello world")
    assert set(ev.stop_tokens(tok2, model, False)) == {128001, 128008, 128009}  # as HELMET: generation config's
    small = tmp_path / "small"
    Llama(LlamaConfig.tiny(vocab_size=1000)).save_pretrained(str(small))
    tok.save(str(small))
    with pytest.raises(SystemExit, match="tokenizer has 128256 tokens but the model's vocabulary is 1000"):
        ev.load_checkpoint(str(small))
    with pytest.raises(SystemExit, match="unknown task"):
        ev.main(["--ckpt", str(tiny_ckpt), "--tasks", "json_kv,nope", "--lengths", "512"])

# ------------------------------------------------------------------------------------------------------------
# 7. the command line's errors and defaults: one line `error: ...` on stderr, exit status 1, never a traceback


def run_cli(*args, cwd=ROOT, env=None, timeout=120):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}  # tests never reach the network
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def assert_error(proc, *fragments):
    """Exit status 1 and, as the last line of stderr, the only `error: ` line, holding every fragment."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("error: ") and sum(x.startswith("error") for x in lines) == 1, proc.stderr[-3000:]
    for f in fragments:
        assert f in lines[-1], (f, lines[-1])


def ckpt_copy(src, dst, config=None, weights=True, tokenizer=True):
    """A checkpoint directory beside `src` sharing its weights (a symlink), with config.json edits."""
    os.makedirs(dst)
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    if weights:
        os.symlink(src / "model.safetensors", dst / "model.safetensors")
    if tokenizer:
        shutil.copy(src / "tokenizer.model", dst / "tokenizer.model")
    return dst


@pytest.mark.parametrize("lengths, fragments", [
    ("64", ["length 64 is too short for json_kv: it needs at least", "tokens, its smallest prompt (",
            "plus the 100 tokens it generates"]),
    ("1x", ["--lengths 1x: '1x' is not a length", "8192 or 8k"]),
])
def test_cli_bad_lengths(tiny_ckpt, tmp_path, lengths, fragments):
    assert_error(run_cli("--ckpt", tiny_ckpt, "--tasks", "json_kv", "--lengths", lengths, "--samples", "1",
                         "--out", tmp_path / "r.json"), *fragments)
    assert not (tmp_path / "r.json").exists()


def test_parse_and_default_lengths():
    assert ev.parse_lengths("8192, 16k,32K") == [8192, 16384, 32768]
    for text, item in [("8k,1.5k", "1.5k"), ("8k,,16k", ""), ("0", "0"), ("-8k", "-8k"), ("8 k", "8 k")]:
        with pytest.raises(ValueError, match=f"--lengths {text}: '{item}' is not a length; give positive token counts"):
            ev.parse_lengths(text)
    k = 1024
    assert ev.default_lengths(524288) == [8 * k, 16 * k, 32 * k, 64 * k, 128 * k, 256 * k, 512 * k]  # ProLong 512K
    assert ev.default_lengths(131072) == [8 * k, 16 * k, 32 * k, 64 * k, 128 * k]
    assert ev.default_lengths(100000) == [8 * k, 16 * k, 32 * k, 64 * k]
    assert ev.default_lengths(8192) == [8192] and ev.default_lengths(4096) == [4096]


def test_cli_default_lengths_stop_at_max_position_embeddings(tiny_ckpt, tmp_path):
    ckpt = ckpt_copy(tiny_ckpt, tmp_path / "ck4k", config={"max_position_embeddings": 4096})
    proc = run_cli("--ckpt", ckpt, "--tasks", "ruler_niah_mk_2", "--samples", "1", "--out", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lengths 4096: the checkpoint's max_position_embeddings" in proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["task", "4096"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["lengths"] == [4096] and list(report["tasks"]["ruler_niah_mk_2"]) == ["4096"]
    (sample,) = report["tasks"]["ruler_niah_mk_2"]["4096"]["samples"]
    assert 0.9 * 4096 <= sample["input_len"] + 50 <= 4096  # filled up to the trained length, not beyond


def test_resolve_checkpoint_local_paths_never_reach_the_hub(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    from model import resolve_checkpoint
    calls, error = [], None

    def snapshot_download(repo_id, **kw):
        calls.append(repo_id)
        if error is not None:
            raise error
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "weights.bin").write_text("")
    for name in ["ck/nothere", "./ck", "../nothere", "ck/", "a/b/c", "/abs/nothere", "~/nothere", "nothere",
                 "ck/weights.bin"]:
        with pytest.raises(FileNotFoundError, match="no checkpoint directory at|has no config.json"):
            resolve_checkpoint(name)
    with pytest.raises(FileNotFoundError, match=r"at ck/nothere \(ck/ is a local directory, so this is a local path"):
        resolve_checkpoint("ck/nothere")
    assert calls == []
    assert resolve_checkpoint("org/name") == str(tmp_path / "snapshot") and calls == ["org/name"]

    def hub_error(cls, text="404 Client Error.\n\nRepository Not Found for url: https://huggingface.co/org/name"):
        e = cls.__new__(cls)  # these take an HTTP response; the message is all that matters here
        Exception.__init__(e, text)
        return e
    for error, says in [(hub_error(GatedRepoError), "is gated: accept its licence"),
                        (hub_error(RepositoryNotFoundError), "does not exist on the hub (or is private"),
                        (LocalEntryNotFoundError("offline"), "not in the local hub cache and cannot be downloaded"),
                        (hub_error(HfHubHTTPError, "500 Server Error\nInternal"), "cannot be downloaded: 500 Server "
                                                                                  "Error Internal")]:
        with pytest.raises(OSError, match="no local directory org/name, and as a hub checkpoint it") as info:
            resolve_checkpoint("org/name")
        assert says in str(info.value) and "\n" not in str(info.value)


def test_cli_missing_local_checkpoint_and_unreachable_hub_id(tiny_ckpt, tmp_path):
    (tmp_path / "ck").mkdir()
    assert_error(run_cli("--ckpt", "ck/nothere", cwd=tmp_path),
                 "no checkpoint directory at ck/nothere (ck/ is a local directory, so this is a local path")
    assert_error(run_cli("--ckpt", "someorg/somemodel", cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf")}),
                 "no local directory someorg/somemodel, and as a hub checkpoint it is not in the local hub cache")


def test_cli_helmet_data_empty_or_misspelt(tiny_ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_error(run_cli("--ckpt", tiny_ckpt, "--helmet-data", tmp_path / "empty", "--lengths", "8k"),
                 f"--helmet-data {tmp_path / 'empty'} has none of json_kv/, ruler/, kilt/, msmarco/")
    assert_error(run_cli("--ckpt", tiny_ckpt, "--helmet-data", tmp_path / "dat"),
                 f"--helmet-data {tmp_path / 'dat'}: no such directory; expected HELMET's data/ folder")
    # the right folder, but no file for these tasks and lengths (the fixtures hold 8K files only); in-process: faster
    with pytest.raises(SystemExit, match="has no file for kilt_nq at lengths 16384; expected kilt/nq-dev-multikilt"):
        ev.main(["--ckpt", str(tiny_ckpt), "--helmet-data", FIXTURES, "--tasks", "kilt_nq", "--lengths", "16k"])
    with pytest.raises(SystemExit, match=r"at lengths 2048 \(HELMET's files are for 8192 to 131072 tokens\)"):
        ev.main(["--ckpt", str(tiny_ckpt), "--helmet-data", FIXTURES, "--tasks", "kilt_nq"])  # the default length


@pytest.mark.parametrize("case, fragments", [
    ("config_not_json", ["config.json is not valid JSON ("]),
    ("no_safetensors", ["has no .safetensors files"]),
    ("truncated_safetensors", ["model.safetensors cannot be read"]),
    ("refused_config", ["attention_bias"]),
    ("no_tokenizer", ["no tokenizer for", "pass --tokenizer SPEC"]),
    ("config_not_object", ["config.json: expected a JSON object", "found [64]"]),
    ("generation_config_not_object", ["generation_config.json: expected a JSON object", "found [128001, 128009]"]),
])
def test_cli_bad_checkpoint(tiny_ckpt, tmp_path, case, fragments):
    # the truncated cases get a file of their own: writing through the symlink would truncate tiny_ckpt's weights
    ckpt = ckpt_copy(tiny_ckpt, tmp_path / case, weights=case not in ("no_safetensors", "truncated_safetensors",
                                                                      "no_tokenizer"),
                     config={"attention_bias": True} if case == "refused_config" else None,
                     tokenizer=case != "no_tokenizer")
    if case == "config_not_json":
        (ckpt / "config.json").write_text('{"hidden_size": 64,')
    if case == "config_not_object":
        (ckpt / "config.json").write_text('[64]')
    if case == "generation_config_not_object":
        (ckpt / "generation_config.json").write_text('[128001, 128009]')
    if case in ("truncated_safetensors", "no_tokenizer"):  # the tokenizer is checked before the weights are read
        (ckpt / "model.safetensors").write_bytes((tiny_ckpt / "model.safetensors").read_bytes()[:100_000])
    assert_error(run_cli("--ckpt", ckpt, "--tasks", "json_kv", "--lengths", "512", "--samples", "1"), *fragments)


def test_cli_samples_must_be_positive(tiny_ckpt, tmp_path):
    for n in (0, -1):  # no NaN scores: an error before anything loads
        assert_error(run_cli("--ckpt", tiny_ckpt, "--tasks", "json_kv", "--lengths", "512", "--samples", n,
                             "--out", tmp_path / "r.json"), f"--samples {n}: give a positive number of samples")
    assert not (tmp_path / "r.json").exists()


def test_cli_helmet_file_missing_a_field(tiny_ckpt, tmp_path):
    os.makedirs(tmp_path / "data" / "kilt")
    for name in ("nq-dev-multikilt_1000_k50_dep6", "popqa_test_1000_k50_dep6"):  # popqa's file without its s_pop
        shutil.copy(os.path.join(FIXTURES, "kilt", "nq-dev-multikilt_1000_k50_dep6.jsonl"),
                    tmp_path / "data" / "kilt" / (name + ".jsonl"))
    assert_error(run_cli("--ckpt", tiny_ckpt, "--helmet-data", tmp_path / "data", "--tasks", "kilt_popqa_3",
                         "--lengths", "8k", "--samples", "1", "--out", tmp_path / "r.json"),
                 "popqa_test_1000_k50_dep6.jsonl: a record has no 's_pop' field, which kilt_popqa_3 reads")
