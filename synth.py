"""Synthetic long-instruction SFT data (ProLong paper, section 5): `python sft.py synth OUT.jsonl --ckpt CKPT
--domain DIR [--n N] [--chunk-tokens 4096] [--context-tokens 64000] [--seed 0] [--max-new-tokens M]
[--temperature T] [--top-p P] [--batch-size B] [--shard K/M]`.

Three kinds of records, from the long documents of a token domain (data.py's format, e.g. books or code repos) and
any checkpoint model.py loads (generation through `Llama.generate_batch`, greedy unless --temperature, stopped at
<|eot_id|> or <|end_of_text|>, prompts in the Llama-3 chat format via `tokenizer.chat_ids(...,
add_generation_prompt=True)`):
  qa   (40%): the model is shown a random chunk of --chunk-tokens tokens of a long document and asked for one question
              and its answer (QA_PROMPT); the record's user turn holds up to --context-tokens of that document (a
              window that contains the chunk) followed by the question, the assistant turn is the answer.
  rag  (30%): a question-answer pair made the same way, then the user turn lists random chunks of the domain as
              retrieved passages, "Document [k](Title: ...)", one of them the chunk the question came from (at a
              random position), then the question; the assistant turn is the answer.
  summary (30%): a document (its first --context-tokens tokens) is cut into chunks; each chunk is summarised by the
              model, then groups of consecutive summaries that fit in one chunk are summarised again, until one
              summary is left; the record is "whole text + request" -> that summary.
The kind of record i is fixed by i alone (KIND_CYCLE: qa, rag, summary, qa, rag, summary, qa, rag, summary, qa), so
every 10 consecutive records are exactly 4 qa / 3 rag / 3 summary, and all randomness of record i comes from
Random(f"{seed}:{i}"): a record does not depend on which records were generated before it, so a resumed run writes
exactly what an uninterrupted run would have written.

Batching: up to --batch-size prompts are generated together (`Llama.generate_batch`: one forward per new token for
all of them), the waiting prompts of several records at once: each record is built by a Python generator (`steps`)
that yields the prompts it needs next (one QA prompt; all chunk summaries of a document; all merges of one level)
and is sent their replies, and a new record is started whenever fewer than --batch-size prompts are waiting. Call k
of record i samples from its own torch.Generator, seeded by (seed, i, k) only, so the batch a prompt lands in does
not change what it draws: the records are those of --batch-size 1 (tests: float64, greedy and sampled; in bf16 the
batched forward rounds differently, which can break a near-tie either way).

Output: one JSON object per line, UltraChat format ({"messages": [{"role", "content"}, ...]}, what `sft.py prepare`
reads; it ignores the other keys) plus "id" (the record index i), "kind", "seed", "parsed" (false when the model's
reply to QA_PROMPT never had the "Question: ... Answer: ..." shape within --retries tries: the raw reply is used as
question and answer; filter such records out before training, e.g. `jq -c 'select(.parsed)'`) and "source" (document
indices). Records are appended in order of id, each with flush + fsync (a record finished before a lower id is held
until that one is written). On start the file is read back: ids already present are skipped, and a last line cut short
by a kill (text after the last newline) is removed and generated again, so a kill at any moment never duplicates or
loses a record (it loses the work on records not yet written, at most a few batches). Progress and ETA go to stderr.
To use several GPUs run one process per GPU with --shard K/M (ids with i % M == K), each writing its own file, and
concatenate the files.

The prompt texts below are NOT the paper's exact wording (Tables 16 and 24 of Gao et al. 2024 were not found
offline); they follow its description (QA pair from a random chunk, RAG with "Document [i](Title: ...)" passages,
recursive summaries). Replace the *_PROMPT / *_RECORD strings to use the paper's exact templates.
"""
import argparse
import json
import os
import random
import re
import signal
import time

from common import ArgumentParser, fail, log, number, one_line_errors
from tokenfiles import DataError, open_domain
from tokenizer import chat_ids, load_tokenizer

KIND_CYCLE = ("qa", "rag", "summary", "qa", "rag", "summary", "qa", "rag", "summary", "qa")  # 4 / 3 / 3 per 10

# Not the paper's exact wording (not found offline): written from the paper's description of its synthetic data.
QA_PROMPT = ("Below is a chunk of a long document. Write one question about this chunk that can be answered from "
             "it, and the answer to the question. Reply in exactly this format:\n"
             "Question: <the question>\nAnswer: <the answer>\n\n"
             "Chunk:\n{chunk}")
QA_RECORD = "{document}\n\nAnswer the question based on the document above.\n\nQuestion: {question}"
RAG_PASSAGE = "Document [{k}](Title: {title}) {text}"
RAG_RECORD = ("Write an accurate answer to the question using only the search results below.\n\n{passages}\n\n"
              "Question: {question}")
SUMMARY_PROMPT = "Summarize the following part of a long text in a few sentences.\n\n{chunk}"
MERGE_PROMPT = ("The following are summaries of consecutive parts of a long text, in order. Combine them into one "
                "summary of the whole text.\n\n{summaries}")
SUMMARY_RECORD = "{text}\n\nSummarize the text above."
QA_REPLY = re.compile(r"Question:\s*(?P<q>.+?)\s*Answer:\s*(?P<a>.+)", re.S)


def kind_of(i):
    return KIND_CYCLE[i % len(KIND_CYCLE)]


def user(content):
    return [{"role": "user", "content": content}]


def qa_prompt(chunk):
    """The messages sent to the model to get a question-answer pair about `chunk` (text)."""
    return user(QA_PROMPT.format(chunk=chunk))


def summary_prompt(chunk):
    return user(SUMMARY_PROMPT.format(chunk=chunk))


def merge_prompt(summaries):
    return user(MERGE_PROMPT.format(summaries="\n\n".join(summaries)))


def rag_passages(passages):
    """passages: [(title, text)] -> the numbered "Document [k](Title: ...) text" block (k from 1)."""
    return "\n\n".join(RAG_PASSAGE.format(k=k, title=t, text=x) for k, (t, x) in enumerate(passages, 1))


def parse_qa(reply):
    m = QA_REPLY.search(reply)
    if not m or not m["q"].strip() or not m["a"].strip():
        return None
    return m["q"].strip(), m["a"].strip()


class Synth:
    """Everything needed to build record i: the model, tokenizer, domain and settings."""

    def __init__(self, model, tok, domain, chunk_tokens=4096, context_tokens=64000, max_new_tokens=512,
                 temperature=0.0, top_p=1.0, seed=0, retries=3, keep_prompts=False, batch_size=8):
        if chunk_tokens < 1 or context_tokens < chunk_tokens:
            raise DataError(f"--chunk-tokens {chunk_tokens} must be >= 1 and <= --context-tokens {context_tokens}")
        if batch_size < 1:
            raise DataError(f"--batch-size must be >= 1, got {batch_size}")
        self.model, self.tok, self.domain = model, tok, domain
        self.chunk, self.context, self.max_new = chunk_tokens, context_tokens, max_new_tokens
        self.temperature, self.top_p, self.seed, self.retries = temperature, top_p, seed, retries
        self.batch_size = batch_size
        self.specials = {tok.bos_id, tok.eos_id}
        self.stop = {tok.eot_id, tok.eos_id}
        lengths = domain.lengths - 2  # tokenize stores BOS text EOS
        self.long_docs = [int(d) for d in range(len(domain)) if lengths[d] >= chunk_tokens]
        if not self.long_docs:
            raise DataError(f"{domain.path}: no document has --chunk-tokens {chunk_tokens} tokens (longest: "
                            f"{int(lengths.max())}); lower --chunk-tokens or use a domain of long documents")
        self.prompts = [] if keep_prompts else None  # every prompt sent (messages), for tests

    # ---- text
    def doc_ids(self, d):
        ids = self.domain.tokens(d)
        return [int(t) for t in ids if int(t) not in self.specials]

    def text(self, ids):
        return self.tok.decode(ids)

    def title(self, d):
        head = [int(t) for t in self.domain.tokens(d, 0, 66) if int(t) not in self.specials]
        first = next((ln.strip() for ln in self.text(head).splitlines() if ln.strip()), "")
        return (first[:80] or f"document {d}").replace("\n", " ")

    # ---- generation
    def generate(self, prompts):
        """Replies (text) to prompts [(messages, record i, call k)], generated together; call k of record i samples
        from its own stream, so neither the batch nor the records generated before change its reply."""
        import torch
        ids, generators = [], []
        for messages, i, k in prompts:
            if self.prompts is not None:
                self.prompts.append(messages)
            ids.append(chat_ids(self.tok, messages, add_generation_prompt=True)[0])
            generators.append(torch.Generator(device=self.model.head_weight.device))
            generators[-1].manual_seed(((self.seed * 1_000_003) + i) * 10_007 + k)
        args = (self.max_new, self.temperature, self.top_p, self.stop)
        with torch.no_grad():
            if len(ids) == 1:  # what generate_batch returns too (tests), without its padding mask
                out = [self.model.generate(ids[0], *args, generator=generators[0])]
            else:
                out = self.model.generate_batch(ids, *args, generator=generators)
        return [self.text(x).strip() for x in out]

    def records(self, ids):
        """Build the records `ids` and yield them in that order, batching the waiting prompts of several records.

        Each record is a `steps` generator waiting for the replies to the prompts it yielded last. A model call
        takes up to batch_size waiting prompts, the oldest records' first; a record resumes once all its prompts
        are answered, and a new record is started whenever fewer than batch_size prompts wait."""
        ids, started, finished, active = iter(ids), [], {}, []
        while True:
            while sum(len(r.prompts) - len(r.replies) for r in active) < self.batch_size:
                i = next(ids, None)
                if i is None:
                    break
                active.append(_Pending(i, self.steps(i)))
                started.append(i)
            if not active:
                return
            waiting = [(r, k) for r in active for k in range(len(r.replies), len(r.prompts))][:self.batch_size]
            for (r, _), reply in zip(waiting, self.generate([(r.prompts[k], r.i, r.calls + k) for r, k in waiting])):
                r.replies.append(reply)
            for r in [r for r in active if len(r.replies) == len(r.prompts)]:
                r.calls += len(r.prompts)
                try:
                    r.prompts, r.replies = r.steps.send(r.replies), []
                except StopIteration as done:
                    active.remove(r)
                    finished[r.i] = done.value
            while started and started[0] in finished:
                yield finished.pop(started.pop(0))

    def record(self, i):
        return next(self.records([i]))

    # ---- records
    def random_chunk(self, rng):
        d = rng.choice(self.long_docs)
        ids = self.doc_ids(d)
        start = rng.randrange(len(ids) - self.chunk + 1)
        return d, ids, start

    def qa_pair(self, rng):
        """(doc, doc ids, chunk start, question, answer, parsed): retries with a new chunk if the reply is not a
        "Question: ... Answer: ..." pair; after --retries tries the last raw reply is used (parsed=False).
        A generator, like `steps`: it yields the QA prompt and is sent the reply."""
        for attempt in range(max(1, self.retries)):
            d, ids, start = self.random_chunk(rng)
            reply, = yield [qa_prompt(self.text(ids[start:start + self.chunk]))]
            pair = parse_qa(reply)
            if pair:
                return d, ids, start, pair[0], pair[1], True
        raw = reply or "(empty generation)"
        return d, ids, start, raw, raw, False

    def steps(self, i):
        """Record i, as a generator: it yields lists of prompts (messages) and is sent their replies (texts), in the
        order its randomness asks for them, and returns the record."""
        rng = random.Random(f"{self.seed}:{i}")
        kind = kind_of(i)
        if kind == "qa":
            d, ids, start, q, a, ok = yield from self.qa_pair(rng)
            end = start + self.chunk
            lo, hi = max(0, end - self.context), min(start, max(0, len(ids) - self.context))
            w = rng.randint(lo, max(lo, hi))
            content = QA_RECORD.format(document=self.text(ids[w:w + self.context]), question=q)
            source = [d]
        elif kind == "rag":
            d, ids, start, q, a, ok = yield from self.qa_pair(rng)
            n = max(2, self.context // self.chunk)
            passages, source = [(self.title(d), self.text(ids[start:start + self.chunk]))], [d]
            for _ in range(n - 1):
                for _try in range(10):  # a distractor that is not the gold chunk itself
                    d2, ids2, s2 = self.random_chunk(rng)
                    if d2 != d or abs(s2 - start) >= self.chunk:
                        break
                passages.append((self.title(d2), self.text(ids2[s2:s2 + self.chunk])))
                source.append(d2)
            gold = rng.randrange(n)
            passages.insert(gold, passages.pop(0))
            source.insert(gold, source.pop(0))
            content = RAG_RECORD.format(passages=rag_passages(passages), question=q)
        else:
            d = rng.choice(self.long_docs)
            ids = self.doc_ids(d)[:self.context]
            summaries = yield [summary_prompt(self.text(ids[s:s + self.chunk])) for s in range(0, len(ids), self.chunk)]
            summaries = [s or "(empty generation)" for s in summaries]
            while len(summaries) > 1:  # summaries of summaries: groups that fit in one chunk, at least two each
                groups, cur, size = [], [], 0
                for s in summaries:
                    n = len(self.tok.encode(s))
                    if len(cur) >= 2 and size + n > self.chunk:
                        groups.append(cur)
                        cur, size = [], 0
                    cur.append(s)
                    size += n
                if len(cur) == 1 and groups:
                    groups[-1].append(cur[0])
                else:
                    groups.append(cur)
                summaries = [s or "(empty generation)" for s in (yield [merge_prompt(g) for g in groups])]
            a, ok, source = summaries[0], True, [d]
            content = SUMMARY_RECORD.format(text=self.text(ids))
        return {"id": i, "kind": kind, "seed": self.seed, "parsed": ok, "source": source,
                "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": a}]}


class _Pending:
    """A record under construction: its steps, the prompts it waits on, the replies so far, the calls before."""

    def __init__(self, i, steps):
        self.i, self.steps, self.calls, self.replies = i, steps, 0, []
        self.prompts = next(steps)  # every record asks the model something


# ------------------------------------------------------------------------------------------------ resumable file

def read_done(path, seed):
    """Ids already in `path`. Every record is written as one line ending in a newline, so text after the last
    newline is a write cut short by a kill: it is removed from the file (and that record generated again)."""
    done = set()
    if not os.path.exists(path):
        return done
    with open(path, "rb") as f:
        data = f.read()
    *complete, tail = data.split(b"\n")
    for n, raw in enumerate(complete, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), int):
            raise DataError(f"{path}:{n}: not a synth record (invalid JSON or no id); fix or remove that line")
        if obj.get("seed", seed) != seed:
            raise DataError(f"{path}:{n}: written with --seed {obj.get('seed')}, not {seed}; use that seed or "
                            f"another output file")
        if obj["id"] in done:
            raise DataError(f"{path}:{n}: id {obj['id']} appears twice")
        done.add(obj["id"])
    if tail:
        log(f"synth: {path}:{len(complete) + 1}: dropping a cut-short last line (an interrupted write); that record "
            f"is generated again")
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(tail))
            f.flush()
            os.fsync(f.fileno())
    return done


def run(out, synth, n, stop_after=None, shard=(0, 1)):
    """Generate the ids 0..n-1 (those with id % shard[1] == shard[0]) that `out` lacks; returns how many."""
    done = read_done(out, synth.seed)
    todo = [i for i in range(n) if i % shard[1] == shard[0] and i not in done]
    extra = sorted(i for i in done if i >= n or i % shard[1] != shard[0])
    log(f"synth: {out}: {len(done)} records already there, {len(todo)} to generate"
        + (f" ({len(extra)} with ids outside --n {n} / --shard are kept)" if extra else ""))
    t0, written = time.time(), 0
    with open(out, "ab", buffering=0) as f:  # unbuffered: nothing of a record waits in memory to be written later
        for rec in synth.records(todo):
            i, end, line = rec["id"], f.tell(), memoryview((json.dumps(rec, ensure_ascii=False) + "\n").encode())
            try:
                while line:
                    line = line[f.write(line):]
                os.fsync(f.fileno())
            except BaseException:  # a full disk, Ctrl-C: the file keeps every whole record and no part of this one
                os.ftruncate(f.fileno(), end)
                raise
            written += 1
            dt = time.time() - t0
            eta = dt / written * (len(todo) - written)
            log(f"synth: {written}/{len(todo)} new records ({rec['kind']} #{i}), {dt / written:.1f}s/record, "
                f"ETA {eta / 60:.1f} min")
            if stop_after is not None and written >= stop_after:  # test hook: die like a kill -9 would
                os.kill(os.getpid(), signal.SIGKILL)
    return written


def main(argv):
    ap = ArgumentParser(prog="sft.py synth", description="synthetic long-instruction SFT data (QA, RAG, "
                        "recursive summaries, 40/30/30) in UltraChat jsonl format")
    ap.add_argument("out", help="output .jsonl (appended to; existing ids are skipped)")
    ap.add_argument("--ckpt", required=True, help="HF-format checkpoint directory or hub id (model + tokenizer)")
    ap.add_argument("--domain", required=True, help="token domain of long documents (data.py tokenize / demo)")
    ap.add_argument("--tokenizer", default=None, help="default: the checkpoint's tokenizer")
    ap.add_argument("--n", type=number(int, 0), default=1000, help="records to have in OUT in all (ids 0..N-1)")
    ap.add_argument("--chunk-tokens", type=number(int, 1), default=4096)
    ap.add_argument("--context-tokens", type=number(int, 1), default=64000,
                    help="longest document text in one record")
    ap.add_argument("--seed", type=number(int, 0), default=0)
    ap.add_argument("--max-new-tokens", type=number(int, 1), default=512)
    ap.add_argument("--temperature", type=number(float, 0), default=0.0, help="0: greedy")
    ap.add_argument("--top-p", type=number(float, 0, 1, above=True), default=1.0)
    ap.add_argument("--retries", type=number(int, 1), default=3,
                    help="QA prompts tried before a reply is kept unparsed")
    ap.add_argument("--batch-size", type=number(int, 1), default=8, help="prompts generated together (one forward "
                    "per new token for all of them); the records do not depend on it")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--shard", default="0/1", help="K/M: only ids i with i %% M == K (one process per GPU, each "
                    "with its own OUT; concatenate the files afterwards)")
    ap.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: SIGKILL after K
    args = ap.parse_args(argv)
    try:
        shard = tuple(int(x) for x in args.shard.split("/"))
        assert len(shard) == 2 and 0 <= shard[0] < shard[1]
    except (ValueError, AssertionError):
        ap.error(f"--shard {args.shard}: expected K/M with 0 <= K < M, e.g. 0/8")
    if args.context_tokens < args.chunk_tokens:
        ap.error(f"--context-tokens {args.context_tokens} must be at least --chunk-tokens {args.chunk_tokens}")
    with one_line_errors(args.out):
        check_output(args.out)
        if os.path.exists(args.ckpt) and not os.path.isdir(args.ckpt) or not os.path.exists(args.ckpt) and \
                not HUB_ID.fullmatch(args.ckpt):
            raise DataError(f"--ckpt {args.ckpt}: no such checkpoint directory (nor a hub id such as "
                            f"princeton-nlp/Llama-3-8B-ProLong-512k-Instruct)")
        import torch
        from model import Llama
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        tok = load_tokenizer(args.tokenizer or args.ckpt)
        domain = open_domain(args.domain)
        model = Llama.from_pretrained(args.ckpt, dtype=dtype, device=device).eval()
        synth = Synth(model, tok, domain, args.chunk_tokens, args.context_tokens, args.max_new_tokens,
                      args.temperature, args.top_p, args.seed, args.retries, batch_size=args.batch_size)
        t0 = time.time()
        try:
            written = run(args.out, synth, args.n, args.stop_after, shard)
        except KeyboardInterrupt:
            fail(f"interrupted; {args.out} holds every finished record (run again to continue)", 130)
    print(f"synth: {args.out}: wrote {written} records in {time.time() - t0:.1f}s; {args.n} ids in all", flush=True)


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def check_output(out):
    """OUT must be a file this run can append to: refused now, before a model is loaded, if it cannot be."""
    if os.path.isdir(out):
        raise DataError(f"{out}: is a directory; name the output .jsonl file (e.g. {os.path.join(out, 'synth.jsonl')})")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise DataError(f"{out}: directory {parent} does not exist")
    if not os.access(out if os.path.exists(out) else parent, os.W_OK):
        raise DataError(f"{out}: not writable")
