"""sources.py's import of the paper's MDS data (`python data.py import-mds`) against mosaic-streaming's MDSWriter: the
committed fixtures under tests/fixtures/mds were written by it (tests/fixtures/make_mds_fixtures.py regenerates
them)."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import sources  # noqa: E402

pytest.importorskip("llama_models.llama3.tokenizer", reason="pip install --no-deps llama-models")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "mds")


def no_leftovers(out):
    """Nothing that looks complete and nothing temporary after a failed run."""
    return not glob.glob(os.path.join(out, "*.json")) and not glob.glob(os.path.join(out, "*.tmp*"))


@pytest.fixture(scope="module")
def tok():
    return data.load_tokenizer()


def expected_documents(name):
    docs = []
    for s in json.load(open(os.path.join(FIXTURES, name, "expected.json")))["samples"]:
        ids = np.array(s["input_ids"]).reshape(-1)
        for a, b in s.get("indices", [[0, len(ids)]]):
            docs.append((ids[a:b].tolist(), None if "mask" not in s else np.array(s["mask"])[a:b].tolist()))
    return docs


@pytest.mark.parametrize("name", ["plain", "zstd", "sft", "dynamic"])
def test_import_mds_equals_what_mosaic_wrote(tmp_path, name, tok):
    if name in ("zstd", "sft"):
        pytest.importorskip("zstandard")
    out = str(tmp_path / name)
    sources.import_mds(os.path.join(FIXTURES, name), out, tok)
    dom, want = data.open_domain(out), expected_documents(name)
    assert len(dom) == len(want) > 0 and dom.has_mask == (name == "sft")
    for i, (ids, mask) in enumerate(want):
        assert dom.tokens(i).tolist() == ids
        if mask is not None:
            assert dom.mask(i).tolist() == mask


def test_imported_sft_mask_reaches_labels(tmp_path, tok):
    pytest.importorskip("zstandard")
    out = str(tmp_path / "sft")
    sources.import_mds(os.path.join(FIXTURES, "sft"), out, tok)
    dom = data.open_domain(out)
    mix = data.Mixture([{"path": out, "proportion": 1, "length": 16, "mode": "pack"}], 16)
    for g in range(mix.comps[0].units):
        seq = mix.sequence(g)
        for (doc, a, b), (a2, b2) in zip(mix._unit(0, g), zip(seq.cu_seqlens[:-1], seq.cu_seqlens[1:])):
            want = np.where(dom.mask(doc, a, b)[1:] == 1, dom.tokens(doc, a, b)[1:].astype(np.int64), -100)
            assert np.array_equal(seq.labels[a2:b2 - 1], want) and seq.labels[b2 - 1] == -100


def test_imported_mds_mask_gives_the_sft_labels(tmp_path, tok):
    # The released-data path: MDS written by mosaic's MDSWriter with a `mask` column -> import-mds -> mode "sft".
    # Labels are computed from what was handed to the writer (expected.json), not from what we imported.
    pytest.importorskip("zstandard")
    out = str(tmp_path / "sft")
    assert data.main(["import-mds", os.path.join(FIXTURES, "sft"), out]) is None
    want = expected_documents("sft")  # documents = the samples' `indices` pieces
    mix = data.Mixture([{"path": out, "proportion": 1, "length": 16, "mode": "sft"}], 16)
    seen = []
    for g in range(mix.comps[0].units):
        seq, pieces = mix.sequence(g), mix._unit(0, g)
        for (doc, a, b), (s, e) in zip(pieces, zip(seq.cu_seqlens[:-1], seq.cu_seqlens[1:])):
            ids, mask = want[doc]
            assert a == 0 and b == e - s == min(len(ids), 16) and seq.input_ids[s:e].tolist() == ids[:b]
            labels = [t if m == 1 else -100 for t, m in zip(ids[1:b], mask[1:b])] + [-100]
            assert seq.labels[s:e].tolist() == labels
            seen.append(doc)
        assert np.all(seq.labels[seq.cu_seqlens[len(pieces)]:] == -100)
    assert sorted(seen) == list(range(len(want))) and any(m for _, mask in want for m in mask[1:])

def test_import_mds_refuses_pickle_and_corrupt_shards(tmp_path, tok):
    out = str(tmp_path / "p")
    with pytest.raises(data.DataError, match="'meta' is pickle-encoded"):
        sources.import_mds(os.path.join(FIXTURES, "pickle"), out, tok)
    assert no_leftovers(out)
    broken = tmp_path / "broken"
    import shutil
    shutil.copytree(os.path.join(FIXTURES, "plain"), broken)
    shard = sorted(broken.glob("shard.*.mds"))[-1]
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(data.DataError, match=r"shard\.\d+\.mds: .* bytes but its offsets end at .*truncated"):
        sources.import_mds(str(broken), str(tmp_path / "b"), tok)
    assert no_leftovers(str(tmp_path / "b"))
    (tmp_path / "not-mds").mkdir()
    with pytest.raises(data.DataError, match="no index.json"):
        sources.import_mds(str(tmp_path / "not-mds"), str(tmp_path / "c"), tok)


@pytest.mark.slow  # a command line in a subprocess
def test_import_mds_tree_and_cli(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "import-mds", FIXTURES,
                          str(tmp_path / "all")], capture_output=True, text=True)
    assert res.returncode != 0 and "pickle" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "import-mds", os.path.join(FIXTURES, "plain"),
                          str(tmp_path / "plain")], capture_output=True, text=True, check=True)
    assert "documents" in res.stderr
    assert len(data.open_domain(str(tmp_path / "plain"))) == len(expected_documents("plain"))
