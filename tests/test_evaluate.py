"""evaluate.py: oracle / empty models through the runner, perplexity, lm-eval, and the CLI (the tasks' own
prompts, metrics and data: tests/test_tasks_*.py)."""
import json
import re
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
from common import UserError  # noqa: E402
from tasks import CATEGORIES, SYNTHETIC, TASKS, category_averages  # noqa: E402
from tests.test_tasks_common import FIXTURES, tok  # noqa: E402,F401  (HELMET's fixture files; the Llama-3 tokenizer)
from tests.test_tasks_rag import helmet_records  # noqa: E402
from tests.test_tasks_recall import synthetic_records  # noqa: E402

FILE_TASKS = [t for t in TASKS if TASKS[t].files is not None]  # the tasks of HELMET's data/ folder


def files(task):
    return TASKS[task].files(8192, FIXTURES)


# ------------------------------------------------------------------------------------------------------------
# 3. an oracle model scores 100, a model that says nothing scores 0


class StubModel:
    """Says nothing, or answers from a table keyed by what the prompt asks (`ask`: prompt text -> answer text)."""
    def __init__(self, tok=None, ask=None, length=None):
        self.tok, self.ask, self.length, self.calls = tok, ask, length, []
        self.config = types.SimpleNamespace(eos_token_id=[128001, 128009], max_position_embeddings=8192)

    def generate(self, prompt_ids, max_new_tokens, **kw):
        self.calls.append((len(prompt_ids), max_new_tokens, kw["stop_tokens"]))
        if self.length is not None:  # the prompt as the model receives it, measured here, not by the code
            assert len(prompt_ids) + max_new_tokens <= self.length, (len(prompt_ids), max_new_tokens, self.length)
        if self.ask is None:
            return []
        assert prompt_ids[0] == self.tok.bos_id and self.tok.bos_id not in prompt_ids[1:]
        return self.tok.encode(self.ask(self.tok.decode(prompt_ids[1:])))


def read_answer(prompt):
    """An oracle that can only answer from what is in the prompt: the gold needle, pair or chain must be there."""
    def last(pattern):
        return re.findall(pattern, prompt)[-1]
    if prompt.endswith("\nCorresponding value:"):  # json_kv
        key = last(r"Key: (.*)\nCorresponding value:$")
        return " " + re.search(f'"{re.escape(key)}": "([^"]*)"', prompt)[1]
    if "special magic" in prompt:
        kind, query = last(r"special magic (\w+) for (.*) mentioned in the provided text (?:is|are)$")
        kind = kind.rstrip("s")  # RULER's question is singular for one value; the needles say "numbers" / "uuids"
        values = re.findall(f"One of the special magic {kind}s for {re.escape(query)} is: (\\S+)\\.", prompt)
        return " " + ", ".join(values)
    if "variable assignment" in prompt:
        body = prompt.split("Memorize and track the chain(s)")[-1]  # not the one-shot example's chain
        value = last(r"assigned the value (\d+), they are:$")
        names = re.findall(f"VAR (\\w+) = {value}\\b", body)
        while True:
            nxt = re.findall(f"VAR (\\w+) = VAR {names[-1]}\\b", body)
            if not nxt:
                return " " + " ".join(names)
            names.append(nxt[0])
    return None


def table_answer(records, task):
    """For tasks whose answer is not in the prompt's text (RAG, re-rank): gold answers keyed by the question."""
    gold = {}
    for r in records:
        if task.startswith("kilt_"):
            gold[r["question"]] = " " + r["answers"][0]
        else:
            gold[r["query"]] = " " + " > ".join(sorted(r["qrels"], key=lambda d: -r["qrels"][d]))
    return lambda prompt: gold[last_question(prompt)]


def last_question(prompt):
    return re.findall(r"(?:Question|Query): (.*)\n(?:Answer|Ranking):$", prompt)[-1]


def records_for(task, tok, length):
    if task in SYNTHETIC:
        return synthetic_records(task, length, 6, tok, seed=1)
    return helmet_records(task, *files(task), samples=10, seed=1)


@pytest.mark.parametrize("task,length", [(t, L) for t in SYNTHETIC for L in (1024, 4096)] + [
    ("ruler_niah_mv@helmet", 8192), ("json_kv@helmet", 8192), ("kilt_nq", 8192), ("msmarco_rerank_psg", 8192)])
def test_oracle_scores_100_and_silence_scores_0(tok, task, length):
    task, _, helmet = task.partition("@")
    records = helmet_records(task, *files(task), 10, 1) if helmet \
        else records_for(task, tok, length)
    ask = read_answer if task == "json_kv" or task.startswith("ruler_") else table_answer(records, task)
    oracle, silent = StubModel(tok, ask, length), StubModel(length=length)
    spec = TASKS[task]
    for stop_newline in (False, True):
        opts = {"stop_newline": stop_newline}
        assert ev.summarize(ev.run_task(oracle, tok, task, records, length, opts), spec.metric)["score"] == 100.0
        assert ev.summarize(ev.run_task(silent, tok, task, records, length, opts), spec.metric)["score"] == 0.0
        newline = {tok.encode("\n")[0], tok.encode("\n\n")[0]}
        for _, max_new, stops in oracle.calls:
            assert max_new == spec.gen_len and {tok.eos_id, tok.eot_id} <= set(stops)
            # HELMET 4526dfb never stops at a newline; --stop-newline does where HELMET's configs ask
            assert newline <= set(stops) if stop_newline and spec.stop_newline else not newline & set(stops)
        oracle.calls.clear()
    if not helmet and task in SYNTHETIC:  # they fill the length (measured by the model stub, not the code)
        assert all(0.9 * length <= n + spec.gen_len for n, _, _ in silent.calls)


def helmet_file_oracle():
    """Answers the tasks of HELMET's data/ folder on the fixture files: from the prompt's text where the answer is there (JSON KV,
    RULER), else from the gold answers of the question asked (RAG, re-rank); None for any other prompt."""
    tables = {t: table_answer(helmet_records(t, *files(t), 100, 42), t)
              for t in ("kilt_nq", "msmarco_rerank_psg")}

    def ask(prompt):
        answer = read_answer(prompt)
        if answer is None and prompt.endswith(("Answer:", "Ranking:")):
            answer = tables["kilt_nq" if prompt.endswith("Answer:") else "msmarco_rerank_psg"](prompt)
        return answer
    return ask


def test_main_on_helmet_data_with_an_oracle(monkeypatch, tok, tmp_path, capsys):
    present = ["json_kv", "ruler_niah_mk_2", "ruler_niah_mv", "kilt_nq", "msmarco_rerank_psg"]
    ask = helmet_file_oracle()
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: (StubModel(tok, ask, 8192 + 2), tok))
    report = ev.main(["--ckpt", "hub/id", "--helmet-data", FIXTURES, "--lengths", "8k", "--tasks", ",".join(FILE_TASKS),
                      "--out", str(tmp_path / "r.json")])
    assert sorted(report["tasks"]) == sorted(present)
    assert all(report["tasks"][t][8192]["score"] == 100.0 for t in present)
    assert {s.split(" @")[0] for s in report["skipped"]} == set(FILE_TASKS) - set(present)
    assert report["averages"]["Re-rank"][8192] == {"score": 100.0, "tasks": ["msmarco_rerank_psg"], "complete": True}
    assert report["averages"]["RAG"][8192]["complete"] is False
    assert report["paper_averages"]["Recall"][8192] == {"score": 100.0, "tasks": ["json_kv"], "complete": True}
    out = capsys.readouterr().out
    assert "Re-rank (avg)" in out and "RAG (avg)" in out and "the ProLong paper's categories" in out
    assert "Recall = mean of json_kv, ruler_niah_mk_2, ruler_niah_mv (only these ran" in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["tasks"]["kilt_nq"]["8192"]["score"] == 100.0 and "4526dfb" in saved["protocol"]["stop_newline"]
    lines = [json.loads(x) for x in open(tmp_path / "r_samples.jsonl")]  # every sample, traceable
    assert len(lines) == sum(r["n"] for by_len in saved["tasks"].values() for r in by_len.values())
    kv = [x for x in lines if x["task"] == "json_kv"]
    assert all(x["substring_exact_match"] == 1.0 and x["output"].strip() == x["answer"] for x in kv)


def test_summary_by_depth_and_category_averages():
    results = [{"depth": d, "m": v} for d, v in [(0.0, 1), (0.0, 0), (1.0, 1), (1.0, 1)]]
    s = ev.summarize(results, "m")
    assert s["score"] == 75.0 and s["by_depth"] == {"0.0": 50.0, "1.0": 100.0}
    scores = {"json_kv": {1024: 10.0}, "ruler_niah_mk_2": {1024: 20.0}, "ruler_niah_mk_3": {1024: 30.0},
              "ruler_niah_mv": {1024: 40.0, 2048: 50.0}, "ruler_vt": {1024: 99.0}, "kilt_nq": {1024: 60.0}}
    avg = category_averages(scores)
    assert avg["Recall"][1024] == {"score": 25.0, "tasks": CATEGORIES["Recall"], "complete": True}
    assert avg["Recall"][2048]["complete"] is False and avg["RAG"][1024]["score"] == 60.0
    assert CATEGORIES["Recall"] == ["json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv"]

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
    from lm_eval.api.model import LM  # lm-eval is a test dependency: the adapter is built on its real base class
    lm = ev.lm_eval_adapter(model, tok, LM)
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


def write_lm_eval_task(folder):
    """A local lm-eval multiple-choice task (YAML + JSONL, no network): the adapter runs under lm-eval itself."""
    docs = [{"question": "The sky is", "choices": [" blue", " green"], "label": 0},
            {"question": "Grass is", "choices": [" red", " green"], "label": 1},
            {"question": "Snow is", "choices": [" white", " black", " grey"], "label": 0}]
    folder.mkdir(exist_ok=True)
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "tiny_local.yaml").write_text(
        f"task: tiny_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{question}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{label}}\"\nmetric_list:\n  - metric: acc\n")
    return docs


@pytest.mark.slow
def test_cli_end_to_end(tiny_ckpt, tmp_path, tok):
    text = tmp_path / "doc.txt"
    text.write_text("Call me Ishmael. Some years ago, never mind how long precisely, I went to sea. " * 30)
    out = tmp_path / "res.json"
    docs = write_lm_eval_task(tmp_path / "lm_tasks")
    tasks = ["json_kv", "ruler_niah_mv"]  # two of the four Recall tasks: keeps the test fast, shows a partial average
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--ckpt", str(tiny_ckpt),
                           "--tasks", ",".join(tasks), "--lengths", "512,1024", "--samples", "1", "--ppl", str(text),
                           "--out", str(out), "--lm-eval", "tiny_local", "--lm-eval-include",
                           str(tmp_path / "lm_tasks")], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "HELMET's categories" and lines[1].split() == ["task", "512", "1024"]
    for name in tasks + ["Recall"]:
        row = next(line.split() for line in lines if line.startswith(name))
        assert len(row) == 3 + (name == "Recall") and all(0 <= float(x) <= 100 for x in row[-2:])
    assert "Recall = mean of json_kv, ruler_niah_mv (only these ran: a partial average)" in proc.stdout
    assert "the ProLong paper's categories" in proc.stdout
    assert "second half of each document" in proc.stdout and "depth 0.0" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["tasks"]) == set(tasks)
    samples = [json.loads(x) for x in open(tmp_path / "res_samples.jsonl")]
    for task in tasks:
        for L in ("512", "1024"):
            r = report["tasks"][task][L]
            assert r["n"] == 1 and 0 <= r["score"] <= 100 and r["source"].startswith("synthetic")
            mine = [s for s in samples if s["task"] == task and s["length"] == int(L)]
            assert len(mine) == 1 and mine[0]["input_len"] + TASKS[task].gen_len <= int(L)
    assert report["perplexity"]["length"] == 1024 and report["perplexity"]["tokens"] > 500
    assert os.path.exists(report["heatmap"])  # matplotlib is a test dependency: the heatmap is drawn, not skipped

    # lm-eval's accuracy on the local task equals the one computed here from the model's own log-probabilities
    from model import Llama
    model = Llama.from_pretrained(str(tiny_ckpt)).eval()
    correct = 0
    for d in docs:
        scores = []
        for choice in d["choices"]:
            ids = [tok.bos_id] + tok.encode(d["question"] + choice)
            n_ctx = 1 + len(tok.encode(d["question"]))
            with torch.no_grad():
                logp = model(torch.tensor(ids)).double().log_softmax(-1)
            scores.append(sum(float(logp[i - 1, ids[i]]) for i in range(n_ctx, len(ids))))
        correct += int(np.argmax(scores) == d["label"])
    assert report["lm_eval"]["tiny_local"]["acc,none"] == pytest.approx(correct / len(docs))


def main_error(capsys, argv, code=1):
    """The one `error:` line that ev.main prints before it exits with status `code` (in-process: faster than the
    CLI, the same code from the argument parser to the exception boundary)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        ev.main([str(a) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == code and lines[-1].startswith("error: "), lines
    assert sum(x.startswith("error") for x in lines) == 1 and not any("Traceback" in x for x in lines), lines
    return lines[-1]


def test_cli_missing_tokenizer_vocab_mismatch_and_unknown_task(tiny_ckpt, tmp_path, tok, capsys):
    from model import Llama, LlamaConfig
    bare = tmp_path / "bare"
    shutil.copytree(tiny_ckpt, bare)
    os.remove(bare / "tokenizer.model")
    assert re.search("no tokenizer for .*bare: .*pass --tokenizer SPEC",  # a message, no traceback
                     main_error(capsys, ["--ckpt", bare, "--lengths", "512", "--samples", "1", "--tasks", "json_kv"]))
    (bare / "generation_config.json").write_text('{"eos_token_id": [128001, 128008, 128009]}')
    model, tok2 = ev.load_checkpoint(str(bare), tokenizer="llama3")  # the package's Llama-3 tokenizer instead
    assert tok2.encode("hello world") == tok.encode("hello world")
    assert set(ev.stop_tokens(tok2, model, False)) == {128001, 128008, 128009}  # as HELMET: generation config's
    small = tmp_path / "small"
    Llama(LlamaConfig.tiny(vocab_size=1000)).save_pretrained(str(small))
    tok.save(str(small))
    with pytest.raises(UserError, match="tokenizer has 128256 tokens but the model's vocabulary is 1000"):
        ev.load_checkpoint(str(small))
    assert "unknown task(s) ['nope']" in main_error(capsys, ["--ckpt", tiny_ckpt, "--tasks", "json_kv,nope",
                                                             "--lengths", "512"])

# ------------------------------------------------------------------------------------------------------------
# 7. the command line's errors and defaults: one line `error: ...` on stderr, exit status 1, never a traceback


def run_cli(*args, cwd=ROOT, env=None, timeout=120):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}  # tests never reach the network
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def assert_error(proc, *fragments, code=1):
    """Exit status `code` and, as the last line of stderr, the only `error: ` line, holding every fragment."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr[-3000:]
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


@pytest.mark.slow  # a full command-line run
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
        with pytest.raises(UserError, match=f"--lengths {text}: '{item}' is not a length; give positive token "
                                            f"counts"):
            ev.parse_lengths(text)
    k = 1024
    assert ev.default_lengths(524288) == [8 * k, 16 * k, 32 * k, 64 * k, 128 * k, 256 * k, 512 * k]  # ProLong 512K
    assert ev.default_lengths(131072) == [8 * k, 16 * k, 32 * k, 64 * k, 128 * k]
    assert ev.default_lengths(100000) == [8 * k, 16 * k, 32 * k, 64 * k]
    assert ev.default_lengths(8192) == [8192] and ev.default_lengths(4096) == [4096]


@pytest.mark.slow
def test_cli_default_lengths_stop_at_max_position_embeddings(tiny_ckpt, tmp_path, tok):
    """A checkpoint trained at 4K is evaluated at 4K without --lengths, on the default (synthetic) tasks, and both
    category tables print."""
    ckpt = ckpt_copy(tiny_ckpt, tmp_path / "ck4k", config={"max_position_embeddings": 4096})
    proc = run_cli("--ckpt", ckpt, "--samples", "1", "--out", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lengths 4096: the checkpoint's max_position_embeddings" in proc.stderr
    out = proc.stdout.split("\n\n")
    assert out[0].splitlines()[:2] == ["HELMET's categories", f"{'task':<22}{4096:>10}"]
    assert "Recall = mean of json_kv, ruler_niah_mk_2, ruler_niah_mk_3, ruler_niah_mv" in out[0]
    assert out[1].startswith("the ProLong paper's categories") and "Recall = mean of json_kv" in out[1]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["lengths"] == [4096] and sorted(report["tasks"]) == sorted(SYNTHETIC)
    samples = [json.loads(x) for x in open(tmp_path / "r_samples.jsonl")]
    for s in samples:  # filled up to the trained length, not beyond
        assert 0.9 * 4096 <= s["input_len"] + TASKS[s["task"]].gen_len <= 4096


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


@pytest.mark.slow  # a full command-line run
def test_cli_missing_local_checkpoint_and_unreachable_hub_id(tiny_ckpt, tmp_path):
    (tmp_path / "ck").mkdir()
    assert_error(run_cli("--ckpt", "ck/nothere", cwd=tmp_path),
                 "no checkpoint directory at ck/nothere (ck/ is a local directory, so this is a local path")
    assert_error(run_cli("--ckpt", "someorg/somemodel", cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf")}),
                 "no local directory someorg/somemodel, and as a hub checkpoint it is not in the local hub cache")


@pytest.mark.slow  # a full command-line run
def test_cli_helmet_data_empty_or_misspelt(tiny_ckpt, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert_error(run_cli("--ckpt", tiny_ckpt, "--helmet-data", tmp_path / "empty", "--lengths", "8k"),
                 f"--helmet-data {tmp_path / 'empty'} has none of json_kv/, ruler/, kilt/, msmarco/")
    assert_error(run_cli("--ckpt", tiny_ckpt, "--helmet-data", tmp_path / "dat"),
                 f"--helmet-data {tmp_path / 'dat'}: no such directory; expected HELMET's data/ folder")
    # the right folder, but no file for these tasks and lengths (the fixtures hold 8K files only); in-process: faster
    assert "has no file for kilt_nq at lengths 16384; expected kilt/nq-dev-multikilt" in main_error(
        capsys, ["--ckpt", tiny_ckpt, "--helmet-data", FIXTURES, "--tasks", "kilt_nq", "--lengths", "16k"])
    assert "at lengths 2048 (HELMET's files are for 4096 to 131072 tokens)" in main_error(
        capsys, ["--ckpt", tiny_ckpt, "--helmet-data", FIXTURES, "--tasks", "kilt_nq"])  # the default length


@pytest.mark.slow  # a full command-line run
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


@pytest.mark.slow  # a full command-line run
def test_cli_samples_must_be_positive(tiny_ckpt, tmp_path, capsys):
    for n in (0, -1):  # no NaN scores: an error before anything loads
        assert_error(run_cli("--ckpt", tiny_ckpt, "--tasks", "json_kv", "--lengths", "512", "--samples", n,
                             "--out", tmp_path / "r.json"), f"argument --samples: must be an integer >= 1, got {n}",
                     code=2)
    assert "argument --ppl-docs: must be an integer >= 1, got 0" in main_error(
        capsys, ["--ckpt", tiny_ckpt, "--tasks", "none", "--ppl", "x.txt", "--ppl-docs", "0"], code=2)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow  # a full command-line run
def test_cli_helmet_file_missing_a_field(tiny_ckpt, tmp_path):
    os.makedirs(tmp_path / "data" / "kilt")
    for name in ("nq-dev-multikilt_1000_k50_dep6", "popqa_test_1000_k50_dep6"):  # popqa's file without its s_pop
        shutil.copy(os.path.join(FIXTURES, "kilt", "nq-dev-multikilt_1000_k50_dep6.jsonl"),
                    tmp_path / "data" / "kilt" / (name + ".jsonl"))
    assert_error(run_cli("--ckpt", tiny_ckpt, "--helmet-data", tmp_path / "data", "--tasks", "kilt_popqa_3",
                         "--lengths", "8k", "--samples", "1", "--out", tmp_path / "r.json"),
                 "popqa_test_1000_k50_dep6.jsonl: a record has no 's_pop' field, which kilt_popqa_3 reads")


# ------------------------------------------------------------------------------------------------------------
# 7. every category from a fixture copy of HELMET's data layout, judged through a real local HTTP endpoint


def perfect_judge(body):
    """An OpenAI-compatible judge that finds every answer right (HELMET's prompts tell which score is asked)."""
    prompt = body["messages"][0]["content"]
    if "Key points:\n" in prompt:  # recall: every key point of the sample (the last numbered list) is found
        points = re.findall(r"^\d+\. ", prompt.rsplit("Key points:\n", 1)[1], flags=re.M)
        answer = {"recall": len(points)}
    elif "Provided summary:" in prompt:
        answer = {"precision": 4, "sentence_count": 4}
    elif "correctness" in prompt:
        answer = {"fluency": 1, "correctness": 3}
    else:
        answer = {"fluency": 1}
    from tests.test_tasks_judge import completion
    return 200, completion("Reasoning step by step... " + json.dumps(answer))


def test_every_category_from_helmet_data_with_an_oracle_and_a_judge(monkeypatch, tok, tmp_path, capsys):
    from tasks import local
    from tests.test_tasks_judge import Server
    from tests.test_tasks_local import HELMET_LONG, SMALL, records
    for k, v in SMALL.items():  # small documents
        monkeypatch.setitem(local.MIN_TOKENS, k, v)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    server = Server(perfect_judge)
    gold = {}  # what each prompt asks, found in its text: (context start, question) -> the gold answer
    for task in HELMET_LONG:
        icl = TASKS[task].category == "ICL"
        for r in records(task, 8192, FIXTURES, 3, 42, tok):
            answer = r["answer"] if isinstance(r["answer"], str) else r["answer"][0]
            gold[(r["context"][:1000] if not icl else "", r["question"])] = " " + answer if icl else answer
    helmet_ask = helmet_file_oracle()

    def ask(prompt):
        answer = helmet_ask(prompt)
        if answer is not None:
            return answer
        if prompt.endswith("\nlabel:"):
            return gold[("", prompt.rsplit("\n\n", 1)[1][:-len("\nlabel:")])]
        assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")  # LongQA, Summ: chat format
        asked = prompt.rsplit("Question: ", 1)[-1]  # the last question: demonstrations quote other questions
        found = [k for k in gold if k[0] and k[0] in prompt and asked.startswith(k[1])]
        return gold[max(found, key=lambda k: len(k[1]))]
    model = StubModel(tok, ask, 8192 + 2)
    model.config.eos_token_id = [tok.eos_id, tok.eot_id]  # an instruct model: --chat auto turns the template on
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: (model, tok))
    args = ["--ckpt", "hub/id", "--helmet-data", FIXTURES, "--lengths", "8k", "--samples", "3", "--out",
            str(tmp_path / "r.json"), "--judge-url", server.url, "--judge-model", "judge-x"]
    report = ev.main(args)
    assert set(report["tasks"]) == {"json_kv", "ruler_niah_mk_2", "ruler_niah_mv", "kilt_nq", "msmarco_rerank_psg",
                                    *HELMET_LONG}
    scores = {t: r[8192]["score"] for t, r in report["tasks"].items()}
    assert scores == {t: 100.0 for t in scores}, scores
    assert report["tasks"]["narrativeqa"][8192]["metric"] == "gpt-4-score"
    assert report["tasks"]["multi_lexsum"][8192]["judged"] == 3
    assert report["tasks"]["multi_lexsum"][8192]["rougeL_f1"] == 100.0  # the oracle wrote the reference summary
    for cat in ("Recall", "RAG", "Re-rank", "ICL", "LongQA", "Summ"):
        assert report["averages"][cat][8192]["score"] == 100.0
    assert report["paper_averages"]["QA"][8192] == {"score": 100.0, "tasks": ["narrativeqa"], "complete": True}
    assert report["paper_averages"]["ICL"][8192]["complete"] is True
    out = capsys.readouterr().out
    assert "ICL = mean of icl_banking77, icl_clinic150, icl_nlu, icl_trec_coarse, icl_trec_fine\n" in out
    calls = len(server.requests)
    prompts = {r["body"]["messages"][0]["content"] for r in server.requests}
    # NarrativeQA one call a sample, Summ three; a prompt already asked (the same summary's fluency) is not paid twice
    assert 3 + 2 * 3 * 3 - 2 <= calls == len(prompts) <= 3 + 2 * 3 * 3
    ev.main(args + ["--tasks", "narrativeqa,multi_lexsum"])  # a rerun: the judge's answers come from the cache
    assert len(server.requests) == calls
    server.httpd.shutdown()
    server.httpd.server_close()


def lengthen(path, field, times):
    """Rewrite a JSONL file with one text field repeated `times` over (HELMET keeps only books longer than 128K /
    64K Llama-2 tokens: the committed fixtures are short, so the command-line test lengthens a copy)."""
    rows = [json.loads(x) for x in open(path)]
    for r in rows:
        *outer, last = field.split(".")
        d = r
        for k in outer:
            d = d[k]
        d[last] = [s for _ in range(times) for s in d[last]] if isinstance(d[last], list) else \
            " ".join([d[last]] * times)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_cli_runs_every_category_on_a_copy_of_helmets_data_layout(tiny_ckpt, tmp_path):
    """python evaluate.py --ckpt CKPT --helmet-data DIR on a fixture copy of HELMET's layout: every category runs on
    the real model and command line, judged through a local OpenAI-compatible endpoint."""
    from tests.test_tasks_judge import Server
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    lengthen(data / "narrativeqa" / "test.jsonl", "document.text", 1200)
    for name in ("qa", "choice", "sum"):
        lengthen(data / "infbench" / f"longbook_{name}_eng.jsonl", "context", 300)
    lengthen(data / "multi_lexsum" / "validation.jsonl", "sources", 300)
    server = Server(perfect_judge)
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--ckpt", str(tiny_ckpt), "--helmet-data",
                           str(data), "--lengths", "8k", "--samples", "1", "--judge-url", server.url,
                           "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost"))
    server.httpd.shutdown()
    server.httpd.server_close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    helmet_table, paper_table = proc.stdout.split("\n\n")[:2]
    for cat in ("Recall", "RAG", "Re-rank", "ICL", "LongQA", "Summ"):
        row = next(line.split() for line in helmet_table.splitlines() if line.startswith(f"{cat} (avg)"))
        assert 0 <= float(row[-1]) <= 100, row
    for cat in ("Recall", "RAG", "Re-rank", "ICL", "QA", "Summ"):
        assert any(line.startswith(f"{cat} (avg)") for line in paper_table.splitlines()), cat
    report = json.loads(out.read_text())
    assert report["protocol"]["chat_template"] == "off"  # a base model: completion mode everywhere, as HELMET
    assert report["tasks"]["multi_lexsum"]["8192"]["judged"] == 1 and server.requests


# ------------------------------------------------------------------------------------------------------------
# 8. the unhappy path (issue 15): every bad setting, file and fault ends in one `error:` line and a non-zero exit,
# and nothing already written changes. In-process through ev.main (the same parser and exception boundary as the
# command line, without a process start per case) where a case needs a stub model; a process where the exit code
# or a signal is the point.


NUMERIC = {"--samples": ["0", "-1", "x"], "--seed": ["-1", "x", "1.5"],  # --seed 0 is a seed like any other
           "--ppl-length": ["0", "-1", "x"], "--ppl-docs": ["0", "-1", "x"], "--lm-eval-limit": ["0", "-1", "x"],
           "--prefill-chunk": ["0", "-1", "x"], "--judge-timeout": ["0", "-1", "x"], "--lengths": ["0", "-1", "x"]}


@pytest.mark.parametrize("option,value", [(o, v) for o, vs in NUMERIC.items() for v in vs])
def test_every_numeric_option_refuses_zero_negative_and_a_wrong_type(option, value, tiny_ckpt, tmp_path, capsys):
    """One `error:` line naming the option and a non-zero exit (argparse's 2 for the declared ranges, 1 for
    --lengths' own parser), before any model loads: nothing is written."""
    code = 1 if option == "--lengths" else 2
    line = main_error(capsys, ["--ckpt", tiny_ckpt, "--tasks", "json_kv", option, value, "--out", tmp_path / "r.json"],
                      code=code)
    assert option in line and value in line, line
    assert not os.listdir(tmp_path)


@pytest.mark.slow  # a full command-line run
def test_a_bad_option_at_the_real_command_line_is_one_line_and_exit_2(tiny_ckpt, tmp_path):
    for option in ("--prefill-chunk", "--ppl-length", "--judge-timeout"):
        assert_error(run_cli("--ckpt", tiny_ckpt, option, "0"), f"evaluate.py: argument {option}: must be", code=2)


def old_outputs(tmp_path):
    """A previous run's results and samples, which a failing run must leave as they are."""
    (tmp_path / "r.json").write_text('{"old": true}')
    (tmp_path / "r_samples.jsonl").write_text('{"old": 1}\n')
    return lambda: ((tmp_path / "r.json").read_text(), (tmp_path / "r_samples.jsonl").read_text()) == \
        ('{"old": true}', '{"old": 1}\n')


def data_copy(tmp_path, rel, edit):
    """HELMET's fixture data folder, copied, with `edit(rows)` -> rows applied to one .jsonl file (or, given bytes,
    that file's content replaced)."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    path = data / rel
    if isinstance(edit, bytes):
        path.write_bytes(edit)
    else:
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        path.write_text("".join(json.dumps(r) + "\n" for r in edit(rows)))
    return data


def edit_all(**fields):
    return lambda rows: [dict(r, **fields) for r in rows]


BAD_FILES = [  # (task, file under data/, edit, what the line must say)
    ("ruler_niah_mk_2", "ruler/niah_multikey_2/validation_8192.jsonl", edit_all(outputs=5),
     "validation_8192.jsonl: field 'outputs' is 5: expected the gold strings"),
    ("kilt_nq", "kilt/nq-dev-multikilt_1000_k50_dep6.jsonl", edit_all(ctxs="passages"),
     "nq-dev-multikilt_1000_k50_dep6.jsonl or "),
    ("kilt_nq", "kilt/nq-dev-multikilt_1000_k50_dep6.jsonl", edit_all(ctxs=[]),
     "field 'ctxs' is []: expected a non-empty list of passages"),
    ("msmarco_rerank_psg", "msmarco/test_reranking_data_k50_dep3.jsonl", edit_all(ctxs=[]),
     "test_reranking_data_k50_dep3.jsonl or "),
    ("narrativeqa", "narrativeqa/test.jsonl", edit_all(document="the story"),
     "test.jsonl: row 1: field 'document' is \"the story\": expected an object"),
    ("infbench_choice_eng", "infbench/longbook_choice_eng.jsonl",
     lambda rows: [dict(r, options=r["options"][:3]) for r in rows], "row 1: field 'options' is"),
    ("json_kv", "json_kv/test_k105_dep6.jsonl", lambda rows: [], "test_k105_dep6.jsonl: no records (an empty file)"),
    ("icl_trec_coarse", "icl/trec/test.jsonl", lambda rows: [], "icl/trec/test.jsonl: no rows"),
    ("icl_trec_coarse", "icl/trec/train.jsonl", lambda rows: [], "icl/trec/train.jsonl: no rows"),
    ("kilt_nq", "kilt/nq-dev-multikilt_1000_k50_dep6.jsonl", b'{"question": "caf\xe9"}\n',
     "nq-dev-multikilt_1000_k50_dep6.jsonl:1: not a JSON line: invalid UTF-8 at byte"),
    ("narrativeqa", "narrativeqa/test.jsonl", b'{"document": "\xff"}\n', "test.jsonl: row 1: invalid UTF-8 at byte"),
]


@pytest.mark.parametrize("task,rel,edit,says", BAD_FILES, ids=[f"{t}-{i}" for i, (t, *_) in enumerate(BAD_FILES)])
def test_a_helmet_file_of_the_wrong_shape_is_one_line_naming_file_and_field(task, rel, edit, says, monkeypatch, tok,
                                                                            tmp_path, capsys):
    data = data_copy(tmp_path, rel, edit)
    unchanged = old_outputs(tmp_path)
    model = StubModel(tok, lambda prompt: " x")
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: (model, tok))
    line = main_error(capsys, ["--ckpt", "hub/id", "--helmet-data", data, "--tasks", task, "--lengths", "8k",
                               "--samples", "1", "--out", tmp_path / "r.json"])
    assert says in line, line
    assert not model.calls and unchanged()  # found before any generation; the previous run's files as they were
    if "field" in says and "or " not in says:
        assert rel.rsplit("/", 1)[-1] in line


def test_fewer_rows_than_samples_is_one_warning_kept_in_the_results(monkeypatch, tok, tmp_path, capsys):
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: (StubModel(tok, helmet_file_oracle(), 8192 + 2), tok))
    rows = len(open(files("json_kv")[0]).read().splitlines())
    kilt = [json.loads(x) for x in open(files("kilt_nq")[0])]
    questions = len({r["question"] for r in kilt})
    depths = [{"question": "q", "id": 7, "depth": d} for d in (0.0, 0.5, 1.0)]  # one question, three rows
    assert TASKS["kilt_nq"].count(depths) == 1 and TASKS["json_kv"].count(depths) == 3
    report = ev.main(["--ckpt", "hub/id", "--helmet-data", FIXTURES, "--tasks", "json_kv,kilt_nq", "--lengths", "8k",
                      "--samples", "1000", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    warnings = [x for x in err.splitlines() if x.startswith("warning: ")]
    assert len(warnings) == 2 and f"json_kv @ 8192: {rows} samples, fewer than the 1000 asked" in warnings[0]
    assert f"kilt_nq @ 8192: {questions} samples" in warnings[1]  # KILT counts questions, not rows (one per depth)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["warnings"] == [w[len("warning: "):] for w in warnings]
    assert saved["tasks"]["json_kv"]["8192"]["samples_asked"] == 1000 and saved["tasks"]["json_kv"]["8192"]["n"] == rows


def judged_setup(monkeypatch, tok, respond):
    from tasks import local
    from tests.test_tasks_judge import Server
    from tests.test_tasks_local import SMALL
    for k, v in SMALL.items():
        monkeypatch.setitem(local.MIN_TOKENS, k, v)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    model = StubModel(tok, lambda prompt: " an answer")
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: (model, tok))
    return Server(respond)


@pytest.mark.parametrize("answer,says", [
    ("silent", "no complete answer within 0.5 s (--judge-timeout)"),
    ({"fluency": 1}, "the answer's content is {\"fluency\": 1}, not text"),
])
def test_a_judge_that_hangs_or_answers_no_text_is_one_line(answer, says, monkeypatch, tok, tmp_path, capsys):
    import time
    from tests.test_tasks_judge import completion

    def respond(body):
        if answer == "silent":
            time.sleep(20)
        return 200, completion(answer)
    server = judged_setup(monkeypatch, tok, respond)
    unchanged = old_outputs(tmp_path)
    start = time.monotonic()
    line = main_error(capsys, ["--ckpt", "hub/id", "--helmet-data", FIXTURES, "--tasks", "narrativeqa", "--lengths",
                               "8k", "--samples", "1", "--judge-url", server.url, "--judge-timeout", "0.5",
                               "--out", tmp_path / "r.json"])
    assert says in line and unchanged() and time.monotonic() - start < 15
    assert not (tmp_path / "r_judge_cache.jsonl").exists() or not (tmp_path / "r_judge_cache.jsonl").read_text()
    server.httpd.server_close()


@pytest.mark.slow  # a full command-line run
def test_bad_ppl_and_lm_eval_fail_before_the_model_runs(tiny_ckpt, tmp_path):
    unchanged = old_outputs(tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"good text \xff\xfe then not")
    common = ["--ckpt", tiny_ckpt, "--tasks", "json_kv", "--lengths", "512", "--samples", "1", "--out",
              tmp_path / "r.json"]
    assert_error(run_cli(*common, "--ppl", tmp_path / "bad.txt"), f"--ppl {tmp_path / 'bad.txt'}: invalid UTF-8 at "
                                                                   f"byte 10")
    assert_error(run_cli(*common, "--ppl", tmp_path / "nothere.txt"), "nothere.txt: no such file or directory")
    proc = run_cli(*common, "--lm-eval", "no_such_task", env={"HF_DATASETS_OFFLINE": "1"})
    assert_error(proc, "--lm-eval: no lm-eval task no_such_task")
    assert "json_kv @ 512" not in proc.stderr  # refused before the HELMET run, not after it
    assert unchanged() and sorted(os.listdir(tmp_path)) == ["bad.txt", "r.json", "r_samples.jsonl"]


@pytest.mark.slow
def test_a_rerun_that_fails_or_is_interrupted_leaves_the_previous_results(tiny_ckpt, tmp_path):
    """A failure after some tasks ran (a --ppl folder that is no token domain), and Ctrl-C during generation: one
    line (exit 1, exit 130), the previous results and samples byte for byte, this run's measurements in .partial."""
    import signal
    import time
    args = ["--ckpt", tiny_ckpt, "--tasks", "json_kv", "--lengths", "512", "--samples", "1", "--out",
            tmp_path / "r.json"]
    assert run_cli(*args).returncode == 0
    before = {f: (tmp_path / f).read_bytes() for f in ("r.json", "r_samples.jsonl")}
    (tmp_path / "not_a_domain").mkdir()
    proc = run_cli(*args, "--ppl", tmp_path / "not_a_domain")
    assert_error(proc, "not_a_domain")
    assert "json_kv @ 512: 1/1" in proc.stderr  # it failed after measuring
    assert {f: (tmp_path / f).read_bytes() for f in before} == before
    assert json.loads((tmp_path / "r.partial.json").read_text())["tasks"]["json_kv"]["512"]["n"] == 1
    assert len((tmp_path / "r_samples.partial.jsonl").read_text().splitlines()) == 1
    cmd = [sys.executable, os.path.join(ROOT, "evaluate.py"), *map(str, args[:-4]), "--samples", "200", "--lengths",
           "1024", "--out", str(tmp_path / "r.json")]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = ""
    while "json_kv @ 1024: 2/200" not in err:  # generating
        line = p.stderr.readline()
        assert line, err
        err += line
    p.send_signal(signal.SIGINT)
    start = time.monotonic()
    rest = p.stderr.read()
    assert p.wait(timeout=60) == 130 and time.monotonic() - start < 30
    lines = [x for x in (err + rest).strip().splitlines() if x.startswith("error")]
    assert lines == ["error: interrupted; temporary files removed, nothing half-written"] and "Traceback" not in rest
    assert {f: (tmp_path / f).read_bytes() for f in before} == before


def test_ctrl_c_during_a_judge_wait_is_one_line_and_130(tmp_path):
    """The judge's wait (a request thread joined with a timeout) gives way to Ctrl-C at once."""
    import signal
    import time
    from tests.test_tasks_judge import Server, completion
    server = Server(lambda body: (time.sleep(30), (200, completion("late")))[1])
    script = ("import sys; sys.path.insert(0, %r)\nfrom common import one_line_errors\nfrom tasks.judge import Judge\n"
              "with one_line_errors():\n    print('asking', flush=True)\n    Judge(%r, 'x', timeout=60).ask('q')\n"
              % (ROOT, server.url))
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    assert p.stdout.readline() == "asking\n"
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=20) == 130
    assert p.stderr.read().strip().splitlines() == ["error: interrupted; temporary files removed, nothing "
                                                    "half-written"]
    server.httpd.server_close()
