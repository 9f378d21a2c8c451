"""synth.py (`sft.py synth`): synthetic long-instruction records. The 40/30/30 split fixed by record index, the prompts
sent to the model equal the templates (formatted by hand here, compared as messages and as token ids), the records a
tiny random checkpoint writes through the command line all pass `sft.py prepare`, and a SIGKILL mid-run (plus a
cut-short last line) followed by a rerun gives exactly N unique ids, identical to an uninterrupted run. Batched
generation (--batch-size) changes how prompts are grouped, never the records: the same bytes as batch size 1."""
import collections
import json
import os
import random
import signal
import subprocess
import sys
import sysconfig

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import sft  # noqa: E402
import synth  # noqa: E402
from model import Llama, LlamaConfig  # noqa: E402
from tokenizer import chat_ids  # noqa: E402

pytest.importorskip("llama_models", reason="pip install --no-deps llama-models (the Llama-3 tokenizer file)")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
CHUNK, CONTEXT = 64, 256

# The templates, written out by hand: a change to synth.py's prompts must be made here too, on purpose.
QA = ("Below is a chunk of a long document. Write one question about this chunk that can be answered from it, and "
      "the answer to the question. Reply in exactly this format:\nQuestion: <the question>\nAnswer: <the answer>\n\n"
      "Chunk:\n{}")
QA_REC = "{}\n\nAnswer the question based on the document above.\n\nQuestion: {}"
RAG_REC = "Write an accurate answer to the question using only the search results below.\n\n{}\n\nQuestion: {}"
SUM = "Summarize the following part of a long text in a few sentences.\n\n{}"
MERGE = ("The following are summaries of consecutive parts of a long text, in order. Combine them into one summary "
         "of the whole text.\n\n{}")
SUM_REC = "{}\n\nSummarize the text above."


@pytest.fixture(scope="module")
def tok():
    return data.load_tokenizer()


@pytest.fixture(scope="module")
def domain_dir(tmp_path_factory, tok):
    lib = sysconfig.get_paths()["stdlib"]
    docs = [(f, [open(os.path.join(lib, f), encoding="utf-8").read()]) for f in ("textwrap.py", "shlex.py",
                                                                                 "fnmatch.py", "colorsys.py")]
    out = str(tmp_path_factory.mktemp("synth") / "dom")
    data.tokenize(docs, out, tok, threads=1)
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok):
    path = str(tmp_path_factory.mktemp("synth") / "ckpt")
    Llama(LlamaConfig.tiny(vocab_size=128256, max_position_embeddings=2048)).save_pretrained(path)
    tok.save(path)
    return path


def test_split_is_40_30_30_fixed_by_index():
    assert collections.Counter(synth.kind_of(i) for i in range(10)) == {"qa": 4, "rag": 3, "summary": 3}
    assert collections.Counter(synth.kind_of(i) for i in range(1000)) == {"qa": 400, "rag": 300, "summary": 300}
    # any 10 consecutive ids (what a resumed run adds) are 4/3/3 too
    for a in range(10):
        assert collections.Counter(synth.kind_of(i) for i in range(a, a + 10)) == {"qa": 4, "rag": 3, "summary": 3}


class FakeModel:
    """Records every prompt; answers QA prompts in the asked-for shape and everything else with a fixed summary."""

    def __init__(self, tok):
        self.tok, self.prompts, self.head_weight = tok, [], torch.zeros(1)
        self.seeds, self.batches = [], []  # each prompt's sampling seed; generate_batch's batch sizes

    def generate(self, prompt_ids, max_new_tokens, temperature=0.0, top_p=1.0, stop_tokens=(), generator=None):
        self.prompts.append(list(prompt_ids))
        self.seeds.append(generator.initial_seed() if generator is not None else None)
        is_qa = "Reply in exactly this format" in self.tok.decode(prompt_ids)
        return self.tok.encode("Question: Which module is this?\nAnswer: A standard one." if is_qa else "A summary.")

    def generate_batch(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, stop_tokens=(), generator=None):
        self.batches.append(len(prompts))
        return [self.generate(p, max_new_tokens, generator=g) for p, g in zip(prompts, generator)]


def doc_ids(dom, tok, d):
    return [int(t) for t in dom.tokens(d) if int(t) not in (tok.bos_id, tok.eos_id)]


def test_prompts_equal_templates(tok, domain_dir):
    dom = data.open_domain(domain_dir)
    model = FakeModel(tok)
    s = synth.Synth(model, tok, dom, chunk_tokens=CHUNK, context_tokens=CONTEXT, seed=7, keep_prompts=True)
    assert s.long_docs == list(range(len(dom)))

    def sent(k, messages):  # the k-th prompt, as messages and as the ids the model got
        assert s.prompts[k] == messages
        assert model.prompts[k] == chat_ids(tok, messages, add_generation_prompt=True)[0]

    # qa: record 0, with its randomness replayed by hand
    rec = s.record(0)
    rng = random.Random("7:0")
    d = rng.choice(s.long_docs)
    ids = doc_ids(dom, tok, d)
    start = rng.randrange(len(ids) - CHUNK + 1)
    sent(0, [{"role": "user", "content": QA.format(tok.decode(ids[start:start + CHUNK]))}])
    assert synth.qa_prompt("X") == [{"role": "user", "content": QA.format("X")}]
    lo, hi = max(0, start + CHUNK - CONTEXT), min(start, max(0, len(ids) - CONTEXT))
    w = rng.randint(lo, max(lo, hi))
    assert w <= start and start + CHUNK <= w + CONTEXT  # the window holds the chunk
    assert rec["kind"] == "qa" and rec["parsed"] and rec["id"] == 0 and rec["seed"] == 7
    assert rec["messages"] == [
        {"role": "user", "content": QA_REC.format(tok.decode(ids[w:w + CONTEXT]), "Which module is this?")},
        {"role": "assistant", "content": "A standard one."}]

    # rag: record 1; the gold chunk is the one the QA prompt showed, among CONTEXT // CHUNK numbered passages
    n0 = len(s.prompts)
    rec = s.record(1)
    assert len(s.prompts) == n0 + 1
    gold = s.prompts[n0][0]["content"][len(QA.format("")):]
    user = rec["messages"][0]["content"]
    passages = user[user.index("Document [1]"):user.index("\n\nQuestion: ")]
    assert user == RAG_REC.format(passages, "Which module is this?")
    blocks = passages.split("\n\nDocument [")
    assert len(blocks) == CONTEXT // CHUNK
    assert sum(b.endswith(") " + gold) for b in blocks) >= 1
    for k, b in enumerate(blocks, 1):
        assert ("Document [" + b if k > 1 else b).startswith(f"Document [{k}](Title: ")
    assert rec["messages"][1] == {"role": "assistant", "content": "A standard one."}

    # summary: record 2; chunk summaries, then one merge of all of them (4 short summaries fit in one chunk)
    n0 = len(s.prompts)
    rec = s.record(2)
    rng = random.Random("7:2")
    d = rng.choice(s.long_docs)
    ids = doc_ids(dom, tok, d)[:CONTEXT]
    chunks = [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)]
    for k, c in enumerate(chunks):
        sent(n0 + k, [{"role": "user", "content": SUM.format(tok.decode(c))}])
    sent(n0 + len(chunks), [{"role": "user", "content": MERGE.format("\n\n".join(["A summary."] * len(chunks)))}])
    assert len(s.prompts) == n0 + len(chunks) + 1
    assert rec["messages"] == [{"role": "user", "content": SUM_REC.format(tok.decode(ids))},
                               {"role": "assistant", "content": "A summary."}]


def test_unparsed_reply_is_retried_then_kept_marked(tok, domain_dir):
    class Mumbler(FakeModel):
        def generate(self, prompt_ids, *a, **k):
            self.prompts.append(list(prompt_ids))
            return self.tok.encode("no idea")

    s = synth.Synth(Mumbler(tok), tok, data.open_domain(domain_dir), CHUNK, CONTEXT, retries=3, keep_prompts=True)
    rec = s.record(0)
    assert len(s.prompts) == 3 and rec["parsed"] is False and rec["messages"][1]["content"] == "no idea"
    assert synth.parse_qa("Question: a?\nAnswer: b") == ("a?", "b") and synth.parse_qa("Answer: b") is None


def test_resume_reader(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_bytes(b'{"id": 0, "seed": 0}\n{"id": 2, "seed": 0}\n{"id": 1, "se')
    assert synth.read_done(str(p), 0) == {0, 2}
    assert p.read_bytes() == b'{"id": 0, "seed": 0}\n{"id": 2, "seed": 0}\n'  # the cut-short line is gone
    with pytest.raises(data.DataError, match="seed"):
        synth.read_done(str(p), 1)
    p.write_bytes(b'{"id": 0, "seed": 0}\n{"id": 0, "seed": 0}\n')
    with pytest.raises(data.DataError, match="twice"):
        synth.read_done(str(p), 0)
    p.write_bytes(b'{"id": 0, "seed": 0}\nnot json\n{"id": 1, "seed": 0}\n')
    with pytest.raises(data.DataError, match=":2:"):
        synth.read_done(str(p), 0)


def test_shards_cover_every_id_once(tmp_path, tok, domain_dir):
    s = synth.Synth(FakeModel(tok), tok, data.open_domain(domain_dir), CHUNK, CONTEXT, max_new_tokens=8)
    files = [tmp_path / f"part{k}.jsonl" for k in range(3)]
    for k, f in enumerate(files):
        assert synth.run(str(f), s, 10, shard=(k, 3)) == len(range(k, 10, 3))
        assert synth.run(str(f), s, 10, shard=(k, 3)) == 0  # resumed: nothing left
    recs = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == list(range(10))
    assert collections.Counter(r["kind"] for r in recs) == {"qa": 4, "rag": 3, "summary": 3}


def test_batch_size_changes_batches_not_records(tmp_path, tok, domain_dir):
    """The scheduler: batches of up to --batch-size prompts from several records, records written in id order, the
    same file for any batch size, and a resumed run adds the rest. Call k of record i samples from its own stream,
    seeded by (seed, i, k) whatever the batch: here 1 call per QA/RAG record (the reply parses), 4 chunk summaries
    and 1 merge per summary record."""
    dom = data.open_domain(domain_dir)
    files, sent = {}, {}
    for bs in (1, 3, 8):
        model = FakeModel(tok)
        s = synth.Synth(model, tok, dom, CHUNK, CONTEXT, max_new_tokens=8, seed=5, batch_size=bs)
        files[bs] = tmp_path / f"b{bs}.jsonl"
        assert synth.run(str(files[bs]), s, 4) == 4 and synth.run(str(files[bs]), s, 10) == 6
        assert max(model.batches, default=1) == bs and all(b <= bs for b in model.batches)
        sent[bs] = dict(zip(model.seeds, map(tuple, model.prompts)))
        assert len(sent[bs]) == len(model.prompts)  # a seed of its own for every prompt
    assert set(sent[1]) == {(5 * 1_000_003 + i) * 10_007 + k for i in range(10)
                            for k in range(5 if synth.kind_of(i) == "summary" else 1)}
    assert sent[3] == sent[1] == sent[8]  # the same prompt under the same seed
    assert [json.loads(x)["id"] for x in files[1].read_text().splitlines()] == list(range(10))
    assert files[3].read_bytes() == files[1].read_bytes() == files[8].read_bytes()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_generation_writes_the_records_of_batch_size_1(tmp_path, tok, domain_dir, temperature):
    """A tiny random Llama in float64, greedy and sampled: --batch-size 4 (generate_batch over prompts of several
    records, QA retries among them) writes the same bytes as --batch-size 1 (generate, one prompt at a time)."""
    model = Llama(LlamaConfig.tiny(vocab_size=128256, initializer_range=0.2)).double().eval()
    real_batch, sizes = model.generate_batch, []
    model.generate_batch = lambda prompts, *a, **k: sizes.append(len(prompts)) or real_batch(prompts, *a, **k)
    out = {}
    for bs in (1, 4):
        s = synth.Synth(model, tok, data.open_domain(domain_dir), CHUNK, CONTEXT, max_new_tokens=8,
                        temperature=temperature, retries=2, batch_size=bs)
        out[bs] = tmp_path / f"b{bs}.jsonl"
        synth.run(str(out[bs]), s, 6)  # qa, rag, summary, qa, rag, summary
        assert (max(sizes) == 4) if bs == 4 else not sizes  # batch size 1 calls generate only
    recs = [json.loads(x) for x in out[1].read_text().splitlines()]
    assert [r["id"] for r in recs] == list(range(6)) and all(r["messages"][1]["content"] for r in recs)
    assert out[4].read_bytes() == out[1].read_bytes()


def synth_cli(out, ckpt, domain, *extra):
    return subprocess.run([sys.executable, os.path.join(ROOT, "sft.py"), "synth", str(out), "--ckpt", ckpt,
                           "--domain", domain, "--n", "10", "--chunk-tokens", str(CHUNK), "--context-tokens",
                           str(CONTEXT), "--max-new-tokens", "8", "--retries", "1", "--temperature", "1.0", *extra],
                          capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.slow
def test_cli_kill_resume_and_prepare(tmp_path, ckpt, domain_dir):
    out = tmp_path / "synth.jsonl"
    killed = synth_cli(out, ckpt, domain_dir, "--stop-after", "4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(out.read_bytes().splitlines()) == 4
    with open(out, "ab") as f:  # and a write cut short by the kill
        f.write(b'{"id": 4, "kind": "rag", "seed": 0, "messages": [{"role": "us')
    again = synth_cli(out, ckpt, domain_dir)
    assert again.returncode == 0, again.stderr
    assert "dropping a cut-short last line" in again.stderr and "ETA" in again.stderr
    lines = out.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    ids = [r["id"] for r in recs]
    assert len(ids) == 10 and sorted(ids) == list(range(10))  # exactly N, no duplicates
    assert all(r["kind"] == synth.kind_of(r["id"]) for r in recs)
    assert collections.Counter(r["kind"] for r in recs) == {"qa": 4, "rag": 3, "summary": 3}

    # a rerun with everything done adds nothing
    third = synth_cli(out, ckpt, domain_dir)
    assert third.returncode == 0 and out.read_text().splitlines() == lines

    # the same records as one uninterrupted run (in-process: the command's main); sampled, so this also checks
    # that record i's sampling stream depends on (seed, i) only
    whole = tmp_path / "whole.jsonl"
    synth.main([str(whole), "--ckpt", ckpt, "--domain", domain_dir, "--n", "10", "--chunk-tokens", str(CHUNK),
                "--context-tokens", str(CONTEXT), "--max-new-tokens", "8", "--retries", "1", "--temperature", "1.0"])
    assert sorted(recs, key=lambda r: r["id"]) == [json.loads(x) for x in whole.read_text().splitlines()]

    # every line passes sft.py prepare (which ignores the extra keys)
    r = sft.prepare(str(tmp_path / "tokens"), [str(out)])
    assert r["skipped"] == 0 and r["train"]["conversations"] == 10 and r["train"]["assistant"] > 0


def test_configs_mix_synthetic(tmp_path):
    import train
    for p in (1, 3, 10, 50):
        cfg = train.load_config([os.path.join(ROOT, "configs", f"sft_synthetic_{p}.py")])
        base = train.load_config([os.path.join(ROOT, "configs", "sft_ultrachat.py")])
        assert {k: v for k, v in cfg.items() if k not in ("mixture", "out_dir")} == \
            {k: v for k, v in base.items() if k not in ("mixture", "out_dir")}
        mix = {c["path"]: c for c in cfg["mixture"]}
        assert set(mix) == {"ultrachat", "synthetic"} and all(c["mode"] == "sft" for c in mix.values())
        assert mix["synthetic"]["proportion"] == pytest.approx(p / 100)
        assert mix["ultrachat"]["proportion"] == pytest.approx(1 - p / 100)
        for d in ("ultrachat", "synthetic"):
            os.makedirs(tmp_path / d, exist_ok=True)
        data.check_mixture(cfg["mixture"], cfg["seq_len"], str(tmp_path))
