"""synth.py (`sft.py synth`): synthetic long-instruction records. The QA prompt is the paper's Table 16 and the
question prompts its Table 17 (pinned by hand here, and against ../shared/paper/SYNTHETIC_PROMPTS.md when present);
the reply parser reads Table 16's Reasoning/Question/Answer format; the 40/30/30 split is fixed by record index; the
prompts sent to the model equal the templates (formatted by hand, compared as messages and as token ids); the
records a tiny random checkpoint writes through the command line all pass `sft.py prepare`; a SIGKILL mid-run (plus
a cut-short last line) or a full disk followed by a rerun gives exactly N unique ids, identical to an uninterrupted
run; --batch-size changes how prompts are grouped, never the records; every bad setting, output and checkpoint is
one `error:` line."""
import collections
import json
import os
import random
import shutil
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
from tests.test_data import error_line, fuzz_numbers, tree  # noqa: E402

pytest.importorskip("llama_models", reason="pip install --no-deps llama-models (the Llama-3 tokenizer file)")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
CHUNK, CONTEXT = 64, 256

# The templates, written out by hand: a change to synth.py's prompts must be made here too, on purpose.
# QA: the paper's Table 16 (B.5), as ../shared/paper/SYNTHETIC_PROMPTS.md reads it; {} is its {sampled snippet}.
QA = ("Given the following snippet of a book, ask a relevant question and provide the answer. The question and the "
      "answer should follow the following rules:\n(1) The question should be specific enough that it can only be "
      "answered with the snippet. The question should also be interesting and intellectual enough that a curious "
      "reader of the book would ask about it.\n(2) The question and the answer should be comprehensible given just "
      "the whole book without highlighting the snippet. With that being said, the question should NOT refer to the "
      "snippet directly (e.g., do NOT say things like \"Question: given the conversation in the snippet, what "
      "...\"). The answer also should not mention \"the snippet\" explicitly (assuming that the snippet is never "
      "provided), but it can copy the snippet content as a reference when answering the question.\n(3) The answer "
      "should be concise but also should provide references to the book when needed. For example, \"Wellington "
      "Yueh betrayed the Atreides, as the book mentioned, '...'\".\n\n*** Start of the snippet ***\n{}\n*** End "
      "of the snippet ***\n\nBefore generating the question and the answer, first reason about what this snippet "
      "is about. In your generation, stick to the following format:\n\nReasoning: this snippet is about ...\n"
      "Question: ...\nAnswer: ...")
# the paper's Table 17
QUESTION_PROMPTS = ["Given the document, please answer the question.",
                    "Here is a piece of text; answer the following question based on it.",
                    "Please answer the question using the provided content.",
                    "Based on the given passage, respond to the question.",
                    "Read the snippet and answer the question that follows."]
# ours
QA_RECS = ["{document}\n\n{prompt}\n\nQuestion: {question}", "{prompt}\n\n{document}\n\nQuestion: {question}",
           "{prompt} {question}\n\n{document}"]
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


REPLY = "Reasoning: this snippet is about a module.\nQuestion: Which module is this?\nAnswer: A standard one."


class FakeModel:
    """Records every prompt; answers QA prompts in the asked-for shape and everything else with a fixed summary."""

    def __init__(self, tok):
        self.tok, self.prompts, self.head_weight = tok, [], torch.zeros(1)
        self.seeds, self.batches = [], []  # each prompt's sampling seed; generate_batch's batch sizes

    def generate(self, prompt_ids, max_new_tokens, temperature=0.0, top_p=1.0, stop_tokens=(), generator=None):
        self.prompts.append(list(prompt_ids))
        self.seeds.append(generator.initial_seed() if generator is not None else None)
        is_qa = "*** Start of the snippet ***" in self.tok.decode(prompt_ids)
        return self.tok.encode(REPLY if is_qa else "A summary.")

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
    prompt, template = rng.choice(QUESTION_PROMPTS), rng.choice(QA_RECS)  # one question prompt, one template
    assert rec["kind"] == "qa" and rec["parsed"] and rec["id"] == 0 and rec["seed"] == 7
    assert rec["messages"] == [
        {"role": "user", "content": template.format(document=tok.decode(ids[w:w + CONTEXT]), prompt=prompt,
                                                    question="Which module is this?")},
        {"role": "assistant", "content": "A standard one."}]  # the reasoning parsed off, kept beside
    assert rec["reasoning"] == "this snippet is about a module." and QA_RECS[rec["template"]] == template

    # rag: record 1; the gold chunk is the one the QA prompt showed, among CONTEXT // CHUNK numbered passages
    n0 = len(s.prompts)
    rec = s.record(1)
    assert len(s.prompts) == n0 + 1
    shown = s.prompts[n0][0]["content"]
    gold = shown[len(QA.split("{}")[0]):len(shown) - len(QA.split("{}")[1])]  # the snippet Table 16's prompt held
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


PAPER = os.path.join(ROOT, "..", "shared", "paper", "SYNTHETIC_PROMPTS.md")


def test_qa_prompt_and_question_prompts_are_the_papers():
    """Table 16 word for word (the hand copy above), and, where the cleaned reading of the paper is at hand, equal to
    its text block too; Table 17's five question prompts likewise."""
    assert synth.QA_PROMPT.replace(synth.SNIPPET, "{}") == QA and synth.qa_prompt("S")[0]["content"] == QA.format("S")
    assert list(synth.QUESTION_PROMPTS) == QUESTION_PROMPTS and list(synth.QA_TEMPLATES) == QA_RECS
    if not os.path.exists(PAPER):
        pytest.skip(f"{PAPER} is not here (it sits beside the repository, not in it)")
    text = open(PAPER, encoding="utf-8").read()
    assert text.split("\n```\n")[1] == synth.QA_PROMPT  # the one fenced block: Table 16
    table17 = text[text.index("## Table 17"):text.index("## Table 23")]
    assert [line.split("`")[1] for line in table17.splitlines() if line[:3] in ("1. ", "2. ", "3. ", "4. ", "5. ")] \
        == QUESTION_PROMPTS


def test_reply_parser_reads_the_three_line_format():
    reply = "Reasoning: this snippet is about a duel.\nQuestion: Who wins the duel?\nAnswer: Paul, as the book says."
    assert synth.parse_qa(reply) == ("Who wins the duel?", "Paul, as the book says.", "this snippet is about a duel.")
    assert synth.parse_qa("Sure! Here it is.\n\n" + reply)[:2] == ("Who wins the duel?", "Paul, as the book says.")
    assert synth.parse_qa("**Reasoning:** r\n**Question:** q?\n**Answer:** a") == ("q?", "a", "r")
    assert synth.parse_qa("Reasoning: this snippet is about ...\nQuestion: ...\nAnswer:") is None  # no answer
    assert synth.parse_qa("Reasoning: a Question: in the reasoning\nAnswer: b") is None  # labels start lines


def test_each_qa_record_samples_one_question_prompt(tok, domain_dir, tmp_path):
    """One of Table 17's prompts per QA record, drawn from the record's own randomness: all five appear over many
    records, the same for a seed (and for a resumed run: records are pure functions of (seed, i)), and the user turn
    holds it."""
    dom = data.open_domain(domain_dir)
    s = synth.Synth(FakeModel(tok), tok, dom, CHUNK, CONTEXT, max_new_tokens=8, seed=3)
    qa_ids = [i for i in range(60) if synth.kind_of(i) == "qa"]
    recs = list(s.records(qa_ids))
    chosen = [r["question_prompt"] for r in recs]
    assert set(chosen) == set(range(5)) and {r["template"] for r in recs} == set(range(3))
    for r in recs:
        assert QUESTION_PROMPTS[r["question_prompt"]] in r["messages"][0]["content"]
    again = synth.Synth(FakeModel(tok), tok, dom, CHUNK, CONTEXT, max_new_tokens=8, seed=3)
    assert [again.record(i)["question_prompt"] for i in qa_ids[-5:]] == chosen[-5:]  # alone, not after the others
    other = synth.Synth(FakeModel(tok), tok, dom, CHUNK, CONTEXT, max_new_tokens=8, seed=4)
    assert [r["question_prompt"] for r in other.records(qa_ids)] != chosen


def test_unparsed_reply_is_retried_then_kept_marked(tok, domain_dir):
    class Mumbler(FakeModel):
        def generate(self, prompt_ids, *a, **k):
            self.prompts.append(list(prompt_ids))
            return self.tok.encode("no idea")

    s = synth.Synth(Mumbler(tok), tok, data.open_domain(domain_dir), CHUNK, CONTEXT, retries=3, keep_prompts=True)
    rec = s.record(0)
    assert len(s.prompts) == 3 and rec["parsed"] is False and rec["messages"][1]["content"] == "no idea"
    assert synth.parse_qa("Question: a?\nAnswer: b") == ("a?", "b", "") and synth.parse_qa("Answer: b") is None


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


def test_every_numeric_option_of_synth_refuses_0_minus_1_and_a_word(tmp_path, capsys):
    """--temperature -1 sampled from the inverted distribution, --max-new-tokens 0 wrote "(empty generation)"
    records marked parsed, --top-p 0 was a traceback: now every numeric option has its range, refused by name."""
    base = {(): [str(tmp_path / "out.jsonl"), "--ckpt", str(tmp_path / "no-ckpt"), "--domain", str(tmp_path)]}
    valid = {((), "--n"): {"0"}, ((), "--seed"): {"0"}, ((), "--temperature"): {"0"}}
    cases, options = fuzz_numbers(synth.main, synth.parser(), base, valid, capsys)
    assert {o for _, o in options} == {"--n", "--chunk-tokens", "--context-tokens", "--seed", "--max-new-tokens",
                                       "--temperature", "--top-p", "--retries", "--batch-size", "--stop-after"}
    assert cases == 30 and not os.listdir(tmp_path)
    for value in ("1.5", "nan", "-0.1"):  # and a top-p outside (0, 1] the other ways
        with pytest.raises(SystemExit):
            synth.main(base[()] + ["--top-p", value])
        assert "argument --top-p: must be a number > 0 and <= 1" in capsys.readouterr().err


@pytest.mark.slow  # command lines in subprocesses
def test_bad_outputs_checkpoints_and_settings_are_one_line(tmp_path, ckpt, domain_dir):
    out = tmp_path / "synth.jsonl"
    out.write_text('{"id": 0, "seed": 0, "kind": "qa"}\n')  # a record already there: no case may touch it
    (tmp_path / "dir.jsonl").mkdir()
    weightless = tmp_path / "weightless"
    shutil.copytree(ckpt, weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    cases = [((tmp_path / "dir.jsonl", ckpt), [], "dir.jsonl: is a directory; name the output .jsonl file"),
             ((out, str(tmp_path / "missing")), [], "--ckpt " + str(tmp_path / "missing") + ": no such checkpoint"),
             ((out, str(weightless)), [], f"checkpoint {weightless} has no .safetensors files"),
             ((out, ckpt), ["--temperature", "-1"], "argument --temperature: must be a number >= 0, got -1"),
             ((out, ckpt), ["--top-p", "0"], "argument --top-p: must be a number > 0 and <= 1, got 0"),
             ((out, ckpt), ["--max-new-tokens", "0"], "argument --max-new-tokens: must be an integer >= 1, got 0"),
             ((out, ckpt), ["--max-new-tokens", "-3"], "argument --max-new-tokens: must be an integer >= 1, got -3"),
             ((out, ckpt), ["--context-tokens", "32"], "--context-tokens 32 must be at least --chunk-tokens 64")]
    for (target, model), extra, message in cases:
        before = tree(tmp_path)
        line = error_line(synth_cli(target, model, domain_dir, *extra), code=2 if extra else 1)
        assert message in line, (extra, line)
        assert tree(tmp_path) == before, extra


def test_a_full_disk_keeps_every_whole_record_and_a_rerun_completes(tmp_path, tok, domain_dir, monkeypatch):
    """The disk fills up in the middle of the third record: the file keeps the first two whole records and not a
    byte of the third, the error is ENOSPC itself (one_line_errors words it), and a rerun writes exactly what an
    uninterrupted run writes."""
    import builtins
    import errno
    s = synth.Synth(FakeModel(tok), tok, data.open_domain(domain_dir), CHUNK, CONTEXT, max_new_tokens=8)
    whole = tmp_path / "whole.jsonl"
    synth.run(str(whole), s, 5)

    class Filling:  # the output file on a disk with room for two records and a few bytes of the third
        def __init__(self, f, room):
            self.f, self.room = f, room

        def write(self, b):
            if self.room <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            n = min(len(b), self.room)
            self.room -= n
            return self.f.write(b[:n])

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    room = sum(len(x) for x in whole.read_bytes().splitlines(keepends=True)[:2]) + 10
    monkeypatch.setattr(synth, "open", lambda *a, **k: Filling(builtins.open(*a, **k), room), raising=False)
    out = tmp_path / "out.jsonl"
    with pytest.raises(OSError) as e:
        synth.run(str(out), s, 5)
    assert e.value.errno == errno.ENOSPC
    assert out.read_bytes() == b"".join(whole.read_bytes().splitlines(keepends=True)[:2])
    monkeypatch.undo()
    assert synth.run(str(out), s, 5) == 3 and out.read_bytes() == whole.read_bytes()


def test_configs_mix_synthetic(tmp_path):
    import settings
    for p in (1, 3, 10, 50):
        cfg = settings.load_config([os.path.join(ROOT, "configs", f"sft_synthetic_{p}.py")])
        base = settings.load_config([os.path.join(ROOT, "configs", "sft_ultrachat.py")])
        assert {k: v for k, v in cfg.items() if k not in ("mixture", "out_dir")} == \
            {k: v for k, v in base.items() if k not in ("mixture", "out_dir")}
        mix = {c["path"]: c for c in cfg["mixture"]}
        assert set(mix) == {"ultrachat", "synthetic"} and all(c["mode"] == "sft" for c in mix.values())
        assert mix["synthetic"]["proportion"] == pytest.approx(p / 100)
        assert mix["ultrachat"]["proportion"] == pytest.approx(1 - p / 100)
        for d in ("ultrachat", "synthetic"):
            os.makedirs(tmp_path / d, exist_ok=True)
        data.check_mixture(cfg["mixture"], cfg["seq_len"], str(tmp_path))
