"""The token-file format: how tokenised documents are written (`ShardWriter`) and read (`Domain`).

A shard is three files: NAME.bin (uint32 tokens, native little-endian), NAME.idx (int64 start offsets plus a
final end offset, so document i is bin[idx[i]:idx[i+1]]) and NAME.json (`FORMAT`, the tokenizer's name and
sha256, the token and document counts, whether a mask comes with it, and where the documents came from). SFT
conversations add NAME.mask (uint8, one per token, 1 = trained on). A *domain* is a directory of shards.

The one idea: a shard is written under temporary names and renamed into place only when the whole run
succeeded, its .json last, so a .json marks a complete shard and a failed or killed run leaves nothing that
looks complete. Every writer is a `with ShardWriter(...) as w:` block: leaving it normally commits, leaving it
by an exception (a bad input, a full disk, Ctrl-C) removes what it wrote. Everything here raises `DataError`
(a `UserError`) for what the user can fix.
"""
import glob, json, os, re

import numpy as np

from common import UserError, log

FORMAT = "prolong-tokens-v1"


class DataError(UserError):
    """A problem with the data the user gave (input files, token files, a tokenizer file, a mixture)."""


def token_meta(tokenizer, source):
    """What NAME.json records about the documents (ShardWriter adds the counts): the tokenizer that made
    the ids, and a word on where they came from."""
    return {"tokenizer": tokenizer.name, "tokenizer_sha256": tokenizer.sha256, "n_vocab": tokenizer.n_vocab,
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "source": source}


def skip_bad(problems, report, strict):
    """A bad input record (a document, a conversation): with --strict it stops the run, which then writes
    nothing; otherwise it is counted in `problems` and reported (the first 100 of them) and the run goes on
    without it."""
    if strict:
        raise DataError(f"{report} (--strict: stopping, nothing written)")
    problems.append(report)
    if len(problems) <= 100:
        log(f"skipped {report}")


# ------------------------------------------------------------------------------------------------ writing

class ShardWriter:
    """Streams documents into OUT/PREFIX-00000.{bin,idx,json} shards under temporary names (*.tmp<pid>);
    see the top note. Temporaries that a killed run (SIGKILL, power loss) left behind are removed first;
    those of a live process, or a second writer of this process on the same shards, stop it instead."""

    _open = set()  # (directory, prefix) of this process's writers not yet committed or aborted

    def __init__(self, out, meta, prefix="part", shard_tokens=1 << 28, with_mask=False):
        self.key = (os.path.realpath(out), prefix)
        if self.key in ShardWriter._open:
            raise DataError(f"{out}: written twice by one run ({prefix}-* shards); give each output its own "
                            f"directory")
        if glob.glob(os.path.join(glob.escape(out), f"{glob.escape(prefix)}-*.json")):
            raise DataError(f"{out} already has {prefix}-*.json shards: choose another --prefix or directory")
        if os.path.exists(out) and not os.path.isdir(out):
            raise DataError(f"{out}: exists and is not a directory")
        self.created = not os.path.exists(out)
        os.makedirs(out, exist_ok=True)
        ShardWriter._open.add(self.key)
        self.out, self.meta, self.prefix = out, meta, prefix
        self.shard_tokens, self.with_mask = shard_tokens, with_mask
        self.tmp = f".tmp{os.getpid()}"
        self.done, self.renamed, self.bin, self.mask = [], [], None, None
        self.tokens = self.documents = 0
        try:
            _remove_stale_temporaries(out, prefix)
        except BaseException:
            self.abort()
            raise

    def __enter__(self):
        return self

    def __exit__(self, kind, value, trace):
        if kind is not None:
            self.abort()
            return False
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise
        return False

    def _open_shard(self):
        base = os.path.join(self.out, f"{self.prefix}-{len(self.done):05d}")
        self.base, self.offsets, self.n = base, [0], 0
        self.bin = open(base + ".bin" + self.tmp, "wb")
        self.mask = open(base + ".mask" + self.tmp, "wb") if self.with_mask else None

    def _close_shard(self):
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
        self.bin = self.mask = None

    def add(self, ids, mask=None):
        if self.bin is None:
            self._open_shard()
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
            self._close_shard()

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
        """Rename every shard into place, all .json files last; returns their paths."""
        if self.bin is not None and len(self.offsets) > 1:
            self._close_shard()
        elif self.bin is not None:  # a shard opened for a document that was then dropped: nothing to keep
            for f in (self.bin, self.mask):
                if f:
                    f.close()
                    os.remove(f.name)
            self.bin = self.mask = None
        for exts in ((".bin", ".mask", ".idx"), (".json",)):
            for base in self.done:
                for ext in exts:
                    if os.path.exists(base + ext + self.tmp):
                        os.replace(base + ext + self.tmp, base + ext)
                        self.renamed.append(base + ext)
        ShardWriter._open.discard(self.key)
        return [b + ".json" for b in self.done]

    def abort(self):
        """Remove everything this writer wrote (a commit cut short included) and the directory if it made
        it."""
        for f in (self.bin, self.mask):
            try:
                if f:
                    f.close()
            except OSError:  # flushing into a full disk fails again; the file is removed below anyway
                pass
        # the .json files first: from the first removal on, no shard of this writer looks complete
        for path in sorted(self.renamed, key=lambda p: not p.endswith(".json")):
            if os.path.exists(path):
                os.remove(path)
        for path in glob.glob(os.path.join(glob.escape(self.out), f"{glob.escape(self.prefix)}-*{self.tmp}")):
            os.remove(path)
        if self.created and os.path.isdir(self.out) and not os.listdir(self.out):
            os.rmdir(os.path.abspath(self.out))  # abspath: rmdir refuses a path ending in '.'
        ShardWriter._open.discard(self.key)


def _remove_stale_temporaries(out, prefix):
    """Delete temporary shards of `prefix` that a killed run left in `out`; those of a live run stop us
    instead."""
    pattern = re.compile(re.escape(prefix) + r"-\d{5,}\.(bin|mask|idx|json)\.tmp(\d*)$")
    stale = [(n, m.group(2)) for n in sorted(os.listdir(out)) if (m := pattern.match(n))]
    for name, pid in stale:
        if pid and int(pid) != os.getpid() and _alive(int(pid)):
            raise DataError(f"{os.path.join(out, name)}: process {pid} is writing {prefix} shards here now; "
                            f"wait for it or choose another --prefix or directory (if no such run exists, "
                            f"delete this file)")
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


# ------------------------------------------------------------------------------------------------ reading

class Domain:
    """Read-only view of a domain directory: document lengths and memory-mapped tokens, without loading
    them. Every shard is checked against its .json when opened, so a truncated or mixed-up file is one
    clear line."""

    def __init__(self, path):
        self.path, self.shards, lengths = path, [], []
        for m in sorted(glob.glob(os.path.join(glob.escape(path), "*.json"))):
            base = m[:-5]
            try:
                meta = json.load(open(m, "rb"))
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    continue  # not a token shard
                idx = np.fromfile(base + ".idx", np.int64)
                tokens = np.zeros(0, np.uint32)  # an empty file cannot be memory-mapped
                if meta["tokens"]:
                    tokens = np.memmap(base + ".bin", np.uint32, "r")
                mask, n_mask = None, os.path.getsize(base + ".mask") if meta.get("has_mask") else 0
                if meta.get("has_mask") and n_mask == len(tokens):
                    mask = np.memmap(base + ".mask", np.uint8, "r") if n_mask else np.zeros(0, np.uint8)
                consistent = len(idx) == meta["documents"] + 1 and idx[0] == 0 and idx[-1] == len(tokens) == \
                    meta["tokens"] and not np.any(np.diff(idx) < 0)
            except (OSError, ValueError, KeyError, TypeError, IndexError) as e:  # ValueError: bad JSON too
                raise DataError(f"{m}: unreadable token shard ({type(e).__name__}: {e}); delete {base}.* and "
                                f"tokenise that input again") from None
            if not consistent:
                raise DataError(f"{base}: .bin/.idx/.json disagree (truncated or mixed-up files)")
            if meta.get("has_mask") and n_mask != len(tokens):
                raise DataError(f"{base}.mask: {n_mask} mask values for {len(tokens)} tokens (truncated or "
                                f"mixed-up files); delete {base}.* and prepare that input again")
            self.shards.append((tokens, idx, mask, meta))
            lengths.append(np.diff(idx))
        if not self.shards:
            raise DataError(f"{path}: no token shards (NAME.bin/.idx/.json written by data.py) in this "
                            f"directory")
        self.lengths = np.concatenate(lengths)
        self.shard_of = np.repeat(np.arange(len(lengths)), [len(x) for x in lengths])
        self.first_doc = np.cumsum([0] + [len(x) for x in lengths])
        self.meta = self.shards[0][3]
        self.has_mask = all(s[2] is not None for s in self.shards)

    def __len__(self):
        return len(self.lengths)

    def tokens(self, i, start=0, end=None):
        """Tokens [start, end) of document i (a view into the memory map)."""
        return self._view(0, i, start, end)

    def mask(self, i, start=0, end=None):
        return self._view(2, i, start, end)

    def _view(self, which, i, start, end):
        shard = self.shards[self.shard_of[i]]
        base = shard[1][i - self.first_doc[self.shard_of[i]]]
        return shard[which][base + start: base + (self.lengths[i] if end is None else end)]


def open_domain(path):
    return Domain(path)
