"""tokenfiles.py: the token-file format read back exactly (shards, masks, counts in NAME.json), every way a domain
on disk can disagree with itself refused in one line, and the writer's promise: a `with ShardWriter` block that
fails, or a commit cut short, leaves nothing that looks complete, and one run cannot write one directory twice."""
import glob, json, os, sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import tokenfiles  # noqa: E402
from tokenfiles import DataError, ShardWriter, open_domain  # noqa: E402

META = {"tokenizer": "synthetic", "tokenizer_sha256": "", "eos_id": 1}


def no_leftovers(out):
    """Nothing that looks complete and nothing temporary after a failed run."""
    return not glob.glob(os.path.join(out, "*.json")) and not glob.glob(os.path.join(out, "*.tmp*"))


def write_domain(path, docs, eos=1, shard_tokens=5000, with_mask=False):
    """A domain of the given documents: ids, or (ids, mask) pairs with_mask."""
    with ShardWriter(str(path), dict(META, eos_id=eos), shard_tokens=shard_tokens, with_mask=with_mask) as w:
        for doc in docs:
            ids, mask = doc if with_mask else (doc, None)
            w.add(ids, mask)
            w.end_document()
    return str(path)


def conversations(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 1000, k), rng.integers(0, 2, k)) for k in rng.integers(1, 50, n)]


def test_shards_read_back_exactly_with_their_counts(tmp_path):
    docs = conversations(60)
    out = write_domain(tmp_path / "dom", docs, shard_tokens=200, with_mask=True)
    dom = open_domain(out)
    assert len(dom.shards) > 2 and len(dom) == len(docs) and dom.has_mask
    for i, (ids, mask) in enumerate(docs):
        assert dom.tokens(i).tolist() == ids.tolist() and dom.mask(i).tolist() == mask.tolist()
    metas = [json.load(open(m)) for m in sorted(glob.glob(os.path.join(out, "*.json")))]
    assert sum(m["tokens"] for m in metas) == sum(len(d) for d, _ in docs) == dom.lengths.sum()
    assert sum(m["documents"] for m in metas) == len(docs)
    assert all(m["format"] == tokenfiles.FORMAT and m["has_mask"] and m["tokenizer"] == "synthetic" for m in metas)
    idx = np.fromfile(os.path.join(out, "part-00000.idx"), np.int64)  # the layout itself, not only the reader
    bin_ = np.fromfile(os.path.join(out, "part-00000.bin"), np.uint32)
    assert idx[0] == 0 and idx[-1] == len(bin_) and bin_[idx[0]:idx[1]].tolist() == docs[0][0].tolist()
    with pytest.raises(DataError, match="already has part-\\*.json shards"):
        ShardWriter(out, META)


def test_truncated_or_mismatched_files_are_refused(tmp_path):
    out = write_domain(tmp_path / "dom", [[5, 6, 7], [8, 9]])
    with open(os.path.join(out, "part-00000.bin"), "r+b") as f:
        f.truncate(8)
    with pytest.raises(DataError, match="disagree"):
        open_domain(out)
    with pytest.raises(DataError, match="no token shards"):
        open_domain(str(tmp_path))


@pytest.mark.parametrize("change", [-1, +1, "empty"])
def test_a_mask_shorter_or_longer_than_the_tokens_is_refused(tmp_path, change):
    out = write_domain(tmp_path / "dom", conversations(5), with_mask=True)
    mask = os.path.join(out, "part-00000.mask")
    values = open(mask, "rb").read()
    open(mask, "wb").write(b"" if change == "empty" else values[:-1] if change < 0 else values + b"\1")
    n = 0 if change == "empty" else len(values) + change
    with pytest.raises(DataError) as e:
        open_domain(out)
    assert str(e.value).startswith(f"{mask}: {n} mask values for {len(values)} tokens"), str(e.value)


def test_a_failed_block_or_a_cut_commit_leaves_nothing(tmp_path, monkeypatch):
    out = str(tmp_path / "dom")
    with pytest.raises(RuntimeError):
        with ShardWriter(out, META, shard_tokens=10) as w:
            for i in range(20):
                w.add(np.arange(7))
                w.end_document()
            raise RuntimeError("an input turned out bad")
    assert not os.path.exists(out)  # the directory it created went with it
    renamed, real = [], os.replace

    def full_after_two(src, dst):  # the third rename of a commit fails (a full disk, a vanished mount)
        if len(renamed) == 2:
            raise OSError(28, "No space left on device")
        renamed.append(dst)
        real(src, dst)

    monkeypatch.setattr(tokenfiles.os, "replace", full_after_two)
    os.makedirs(out)
    with pytest.raises(OSError):
        with ShardWriter(out, META, shard_tokens=10) as w:
            for i in range(20):
                w.add(np.arange(7))
                w.end_document()
    assert len(renamed) == 2 and os.listdir(out) == []  # what the commit had renamed is gone too


def test_one_run_cannot_write_one_directory_twice(tmp_path):
    out = str(tmp_path / "dom")
    with ShardWriter(out, META) as first:
        with pytest.raises(DataError, match="written twice by one run"):
            ShardWriter(os.path.join(out, "."), META)  # the same directory under another spelling
        first.add([1, 2, 3])
        first.end_document()
    assert len(open_domain(out)) == 1  # the refused second writer took nothing of the first one's
    with ShardWriter(out, META, prefix="more") as again:  # once committed, the directory is free again
        again.add([4])
        again.end_document()
    assert len(open_domain(out)) == 2


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "chat.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="exists and is not a directory"):
        ShardWriter(str(tmp_path / "chat.jsonl"), META)
    assert (tmp_path / "chat.jsonl").read_text() == "{}\n"
