"""tokenizer.py: the Llama-3 tokenizer against llama_models' own (ids, special tokens, long runs, streaming), loading
from paths, directories, checkpoints and tokenizer.json, and atomic_write."""
import os
import random
import sys
import sysconfig
import glob

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import tokenizer  # noqa: E402

llama_tokenizer = pytest.importorskip("llama_models.llama3.tokenizer", reason="pip install --no-deps llama-models")
STDLIB = sysconfig.get_paths()["stdlib"]


@pytest.fixture(scope="module")
def ref():
    return llama_tokenizer.Tokenizer.get_instance()


@pytest.fixture(scope="module")
def tok():
    return tokenizer.load_tokenizer()


def stdlib_texts(n=40, seed=0):
    files = sorted(f for f in glob.glob(os.path.join(STDLIB, "**", "*.py"), recursive=True) if "-packages" not in f)
    return [open(f, encoding="utf-8", errors="replace").read() for f in random.Random(seed).sample(files, n)]


def test_special_tokens_and_ids_match_llama_models(tok, ref):
    assert tok.special_tokens == ref.special_tokens and len(tok.special_tokens) == 256
    assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.n_vocab) == (128000, 128001, 128009, ref.n_words) == \
        (ref.bos_id, ref.eos_id, ref.eot_id, 128256)
    assert tok.special_tokens["<|start_header_id|>"] == 128006 and tok.special_tokens["<|end_header_id|>"] == 128007
    assert tok.name == "llama3" and tok.sha256 == tokenizer.LLAMA3_SHA256
    texts = stdlib_texts() + ["Héllo wörld — 中文 текст 🙂", "<|begin_of_text|>user text <|eot_id|> stays text",
                              "", " ", "\r\n\r\n  x", "don't I'LL 12345678 ..."]
    for t in texts:
        assert tok.encode(t) == ref.encode(t, bos=False, eos=False)
        assert tok.decode(tok.encode(t)) == t
    assert tok.encode_batch(texts, num_threads=2) == [ref.encode(t, bos=False, eos=False) for t in texts]
    assert 128000 not in tok.encode("<|begin_of_text|>")


def test_safe_split_points_never_change_ids(tok, ref):
    # target=1 cuts at every safe point, so every claimed split point is exercised against the reference.
    rng = random.Random(0)
    alphabet = [" ", "\n", "\r", "\t", "a", "Bc", "1", "234", ".", "'s", "'", "é", "\u00a0", "\x1c", "中", "!!",
                "\u2028", "  ", "\n\n", " x", "\r\n", "_", "-\n"]
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 50)))
        pieces = list(tokenizer.text_pieces([s], target=1))
        assert "".join(pieces) == s
        assert [t for p in pieces for t in tok._encode_many([p], 1)[0]] == ref.encode(s, bos=False, eos=False), s


def test_long_runs_follow_llama_models_rule(tok, ref):
    rng = random.Random(1)
    for _ in range(12):
        parts = [rng.choice(["a", "b c", " ", "\n", "xy", ".", "1"]) * rng.choice([1, 10, 1000, 30000, 60000])
                 for _ in range(rng.randint(1, 6))]
        s = "".join(parts)[:390_000]  # under llama_models' 400,000-character window
        assert tok.encode(s) == ref.encode(s, bos=False, eos=False)
        assert [t for p in tokenizer.text_pieces([s], target=7) for t in tok._encode_many([p], 1)[0]] == \
            ref.encode(s, bos=False, eos=False)


def test_streaming_blocks_equal_whole_text_encoding(tok):
    text = "".join(stdlib_texts(150, seed=2))  # > 1M characters: beyond llama_models' window, so compare to whole
    assert len(text) > 1_000_000
    whole = tok._encode_many([text], 1)[0]
    rng, blocks, i = random.Random(3), [], 0
    while i < len(text):
        n = rng.choice([1, 7, 1000, 70_000, 300_000])
        blocks.append(text[i:i + n])
        i += n
    pieces = list(tokenizer.text_pieces(iter(blocks)))
    assert "".join(pieces) == text and max(map(len, pieces)) < 200_000
    assert [t for ids in tok._encode_many(pieces, 2) for t in ids] == whole


def test_text_without_any_safe_point_is_still_cut_in_bounded_pieces(monkeypatch, tok):
    # ".\n ." has no point where Llama-3's regex must start a new piece; the carry must not grow without end.
    monkeypatch.setattr(tokenizer, "MAX_CARRY", 5000)  # read by tokenizer._split
    text = ".\n ." * 20_000
    pieces = list(tokenizer.text_pieces(iter(text[i:i + 1000] for i in range(0, len(text), 1000)), target=100))
    assert "".join(pieces) == text and max(map(len, pieces)) <= 5000 + 2 * 100 + 1000


def test_load_tokenizer_from_path_dir_checkpoint_and_errors(tmp_path, tok):
    path = tok.files[0]
    assert tokenizer.load_tokenizer(path).sha256 == tok.sha256
    snapshot = tmp_path / "snapshot" / "original"
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.model").write_bytes(open(path, "rb").read())
    assert tokenizer.load_tokenizer(tmp_path / "snapshot").name == "llama3"
    tok.save(tmp_path / "ckpt")
    again = tokenizer.load_tokenizer(tmp_path / "ckpt")
    assert again.name == "llama3" and again.encode("hello there") == tok.encode("hello there")
    (tmp_path / "empty").mkdir()
    with pytest.raises(tokenizer.DataError, match="no tokenizer.model"):
        tokenizer.load_tokenizer(tmp_path / "empty")
    with pytest.raises(tokenizer.DataError, match="no such tokenizer"):
        tokenizer.load_tokenizer(str(tmp_path / "missing.model"))
    (tmp_path / "bad.model").write_text("not base64 !!\n")
    with pytest.raises(tokenizer.DataError, match="bad.model"):
        tokenizer.load_tokenizer(tmp_path / "bad.model")


def test_hf_tokenizer_json_directory(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(stdlib_texts(5), trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    t = tokenizer.load_tokenizer(tmp_path)
    text = "def f(x):\n    return x <|endoftext|> done"
    assert hf.encode(text).ids != t.encode(text)  # by default HF turns the special-token text into its id
    hf.encode_special_tokens = True
    assert t.encode(text) == hf.encode(text, add_special_tokens=False).ids
    assert t.special_tokens["<|endoftext|>"] not in t.encode(text)  # user text never becomes a special id
    assert (t.eos_id, t.eot_id) == (t.special_tokens["<|endoftext|>"], t.special_tokens["<|im_end|>"])
    assert t.decode(t.encode(text)) == text
    for name in ("tokenizer_config.json", "tokenizer.json"):  # a cut-off download of either file: one clear line
        (tmp_path / name).write_text('{"eos_token": ')
        with pytest.raises(tokenizer.DataError, match=f"^{tmp_path}: unreadable tokenizer.json or tokenizer_config.json"):
            tokenizer.load_tokenizer(tmp_path)


def test_atomic_write_failing_midway_keeps_the_old_file_and_no_temporary(tmp_path):
    class Interrupted(str):  # the write is cut off (Ctrl-C, a full disk) after the temporary file was opened
        def encode(self):
            raise KeyboardInterrupt
    target = tmp_path / "chat.jsonl"
    target.write_text("old content\n")
    with pytest.raises(KeyboardInterrupt):
        common.atomic_write(str(target), Interrupted("new content"))
    assert os.listdir(tmp_path) == ["chat.jsonl"] and target.read_text() == "old content\n"
