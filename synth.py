"""Synthetic long-instruction SFT data (ProLong paper, section 5 and appendix B.5), `python sft.py synth
OUT.jsonl --ckpt CKPT --domain DIR [--n N] [--chunk-tokens 4096] [--context-tokens 64000] [--seed 0]
[--batch-size B] ...`: records in UltraChat jsonl for `sft.py prepare`, made by any checkpoint model.py loads
from the long documents of a token domain (books, as the paper does). Three kinds, 40/30/30 as the paper mixes:
  qa      the model is shown a random chunk (--chunk-tokens) and asked for a question and its answer
          (QA_PROMPT); the record's user turn is up to --context-tokens of that document (a window holding the
          chunk) with the question and one of QUESTION_PROMPTS, laid out by one of QA_TEMPLATES; the assistant
          turn is the answer.
  rag     a question-answer pair made the same way, asked over random chunks of the domain shown as retrieved
          passages "Document [k](Title: ...)", the gold chunk among them at a random position.
  summary a document's chunks are summarised, then groups of consecutive summaries, until one summary is left;
          the record is the whole text and a request -> that summary.

Which text is the paper's: QA_PROMPT is Table 16 of the paper, word for word as
../shared/paper/SYNTHETIC_PROMPTS.md reads it (its reply format "Reasoning: / Question: / Answer:"; the
reasoning is parsed off, kept in the record but never trained on), and QUESTION_PROMPTS are Table 17's five
question prompts, one sampled per record, as the paper samples them. Ours, because the paper prints none:
QA_TEMPLATES (it says it samples "one template" too, without showing them; the third is Table 23's layout),
the RAG and summary prompts and records.

The one idea: record i is a pure function of (seed, i). Its kind is KIND_CYCLE[i % 10] (any 10 consecutive
records are 4 qa / 3 rag / 3 summary), all its choices come from Random(f"{seed}:{i}"), and its k-th model
call samples from a torch.Generator seeded by (seed, i, k). So a resumed run writes exactly what an
uninterrupted one would, and --batch-size (prompts of several records generated together by
`Llama.generate_batch`) changes how prompts are grouped, never the records. Each record is a Python generator
(`steps`) that yields the prompts it needs next and is sent their replies; records are appended in id order,
each line written whole and fsynced, and on start the file is read back: ids already there are skipped, a last
line cut short by a kill is dropped and made again.
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

KIND_CYCLE = ("qa", "rag", "summary", "qa", "rag", "summary", "qa", "rag", "summary", "qa")  # 4/3/3 per 10

# The paper's Table 16, the prompt for generating synthetic QA data (books), sent to Llama-3-8B-Instruct.
QA_PROMPT = """Given the following snippet of a book, ask a relevant question and provide the answer. The question \
and the answer should follow the following rules:
(1) The question should be specific enough that it can only be answered with the snippet. The question should also \
be interesting and intellectual enough that a curious reader of the book would ask about it.
(2) The question and the answer should be comprehensible given just the whole book without highlighting the \
snippet. With that being said, the question should NOT refer to the snippet directly (e.g., do NOT say things like \
"Question: given the conversation in the snippet, what ..."). The answer also should not mention "the snippet" \
explicitly (assuming that the snippet is never provided), but it can copy the snippet content as a reference when \
answering the question.
(3) The answer should be concise but also should provide references to the book when needed. For example, \
"Wellington Yueh betrayed the Atreides, as the book mentioned, '...'".

*** Start of the snippet ***
{sampled snippet}
*** End of the snippet ***

Before generating the question and the answer, first reason about what this snippet is about. In your generation, \
stick to the following format:

Reasoning: this snippet is about ...
Question: ...
Answer: ..."""
SNIPPET = "{sampled snippet}"  # QA_PROMPT's slot for the chunk (filled by replace: not a format string)
# The paper's Table 17: question prompts, one sampled per synthetic QA record.
QUESTION_PROMPTS = ("Given the document, please answer the question.",
                    "Here is a piece of text; answer the following question based on it.",
                    "Please answer the question using the provided content.",
                    "Based on the given passage, respond to the question.",
                    "Read the snippet and answer the question that follows.")
# Ours from here on (the paper prints no templates, RAG or summary prompts).
QA_TEMPLATES = ("{document}\n\n{prompt}\n\nQuestion: {question}",
                "{prompt}\n\n{document}\n\nQuestion: {question}",
                "{prompt} {question}\n\n{document}")  # Table 23's example: prompt and question, then the book
RAG_PASSAGE = "Document [{k}](Title: {title}) {text}"
RAG_RECORD = ("Write an accurate answer to the question using only the search results below.\n\n"
              "{passages}\n\nQuestion: {question}")
SUMMARY_PROMPT = "Summarize the following part of a long text in a few sentences.\n\n{chunk}"
MERGE_PROMPT = ("The following are summaries of consecutive parts of a long text, in order. Combine them into "
                "one summary of the whole text.\n\n{summaries}")
SUMMARY_RECORD = "{text}\n\nSummarize the text above."
# Table 16's reply, three labelled parts, each label at the start of a line (markdown bold or a heading mark
# around it allowed); a reply that skips the reasoning still gives its pair
LABEL = r"^[ \t*#_]*{}[ \t*_]*:[ \t*_]*"
QA_REPLY = re.compile("(?:" + LABEL.format("Reasoning") + r"(?P<r>.*?)\s*)?" + LABEL.format("Question") +
                      r"(?P<q>.+?)\s*" + LABEL.format("Answer") + r"(?P<a>.+)", re.S | re.M | re.I)


def kind_of(i):
    return KIND_CYCLE[i % len(KIND_CYCLE)]


def user(content):
    return [{"role": "user", "content": content}]


def qa_prompt(chunk):
    """The messages sent to the model to get a question-answer pair about `chunk` (text): Table 16's
    prompt."""
    return user(QA_PROMPT.replace(SNIPPET, chunk))


def summary_prompt(chunk):
    return user(SUMMARY_PROMPT.format(chunk=chunk))


def merge_prompt(summaries):
    return user(MERGE_PROMPT.format(summaries="\n\n".join(summaries)))


def rag_passages(passages):
    """passages: [(title, text)] -> the numbered "Document [k](Title: ...) text" block (k from 1)."""
    return "\n\n".join(RAG_PASSAGE.format(k=k, title=t, text=x) for k, (t, x) in enumerate(passages, 1))


def parse_qa(reply):
    """(question, answer, reasoning) of a reply in Table 16's format ("" for a reasoning it skipped), or
    None."""
    m = QA_REPLY.search(reply)
    if not m or not m["q"].strip() or not m["a"].strip():
        return None
    return m["q"].strip(), m["a"].strip(), (m["r"] or "").strip()


class Synth:
    """Everything needed to build record i: the model, tokenizer, domain and settings."""

    def __init__(self, model, tok, domain, chunk_tokens=4096, context_tokens=64000, max_new_tokens=512,
                 temperature=0.0, top_p=1.0, seed=0, retries=3, keep_prompts=False, batch_size=8):
        if chunk_tokens < 1 or context_tokens < chunk_tokens:
            raise DataError(f"--chunk-tokens {chunk_tokens} must be >= 1 and <= --context-tokens "
                            f"{context_tokens}")
        if batch_size < 1:
            raise DataError(f"--batch-size must be >= 1, got {batch_size}")
        self.model, self.tok, self.domain = model, tok, domain
        self.chunk, self.context, self.max_new = chunk_tokens, context_tokens, max_new_tokens
        self.temperature, self.top_p, self.seed, self.retries = temperature, top_p, seed, retries
        self.batch_size = batch_size
        self.specials = {tok.bos_id, tok.eos_id}
        self.stop = {tok.eot_id, tok.eos_id}
        lengths = domain.lengths - 1 - tok.add_bos  # tokenize stores BOS text EOS, or text EOS (Qwen: no BOS)
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
        """Replies (text) to prompts [(messages, record i, call k)], generated together; call k of record i
        samples from its own stream, so neither the batch nor the records generated before change its
        reply."""
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
        """Build the records `ids` and yield them in that order, batching the waiting prompts of several
        records.

        Each record is a `steps` generator waiting for the replies to the prompts it yielded last. A model
        call takes up to batch_size waiting prompts, the oldest records' first; a record resumes once all
        its prompts are answered, and a new record is started whenever fewer than batch_size prompts wait."""
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
            replies = self.generate([(r.prompts[k], r.i, r.calls + k) for r, k in waiting])
            for (r, _), reply in zip(waiting, replies):
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
        """(doc, doc ids, chunk start, (question, answer, reasoning), parsed): retries with a new chunk if
        the reply is not in Table 16's format; after --retries tries the last raw reply is used as question
        and answer (parsed=False). A generator, like `steps`: it yields the QA prompt and is sent the
        reply."""
        for attempt in range(max(1, self.retries)):
            d, ids, start = self.random_chunk(rng)
            reply, = yield [qa_prompt(self.text(ids[start:start + self.chunk]))]
            qa = parse_qa(reply)
            if qa:
                return d, ids, start, qa, True
        raw = reply or "(empty generation)"
        return d, ids, start, (raw, raw, ""), False

    def steps(self, i):
        """Record i, as a generator: it yields lists of prompts (messages) and is sent their replies
        (texts), in the order its randomness asks for them, and returns the record."""
        rng = random.Random(f"{self.seed}:{i}")
        kind = kind_of(i)
        extra = {}
        if kind == "qa":
            d, ids, start, (q, a, reasoning), ok = yield from self.qa_pair(rng)
            end = start + self.chunk
            lo, hi = max(0, end - self.context), min(start, max(0, len(ids) - self.context))
            w = rng.randint(lo, max(lo, hi))
            prompt, template = rng.choice(QUESTION_PROMPTS), rng.choice(QA_TEMPLATES)  # paper: one of each
            content = template.format(document=self.text(ids[w:w + self.context]), prompt=prompt, question=q)
            source, extra = [d], {"reasoning": reasoning, "question_prompt": QUESTION_PROMPTS.index(prompt),
                                  "template": QA_TEMPLATES.index(template)}
        elif kind == "rag":
            d, ids, start, (q, a, reasoning), ok = yield from self.qa_pair(rng)
            extra = {"reasoning": reasoning}
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
            chunks = [self.text(ids[s:s + self.chunk]) for s in range(0, len(ids), self.chunk)]
            summaries = yield [summary_prompt(c) for c in chunks]
            summaries = [s or "(empty generation)" for s in summaries]
            while len(summaries) > 1:  # summaries of summaries: groups that fit in a chunk, two at least
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
        return {"id": i, "kind": kind, "seed": self.seed, "parsed": ok, "source": source, **extra,
                "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": a}]}


class _Pending:
    """A record under construction: its steps, the prompts it waits on, the replies so far, the calls
    before."""

    def __init__(self, i, steps):
        self.i, self.steps, self.calls, self.replies = i, steps, 0, []
        self.prompts = next(steps)  # every record asks the model something


# --------------------------------------------------------------------------------------------- resumable file

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
            raise DataError(f"{path}:{n}: not a synth record (invalid JSON or no id); fix or remove that "
                            f"line")
        if obj.get("seed", seed) != seed:
            raise DataError(f"{path}:{n}: written with --seed {obj.get('seed')}, not {seed}; use that seed "
                            f"or "
                            f"another output file")
        if obj["id"] in done:
            raise DataError(f"{path}:{n}: id {obj['id']} appears twice")
        done.add(obj["id"])
    if tail:
        log(f"synth: {path}:{len(complete) + 1}: dropping a cut-short last line (an interrupted write); that "
            f"record "
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
    with open(out, "ab", buffering=0) as f:  # unbuffered: no part of a record waits in memory to be written
        for rec in synth.records(todo):
            line = memoryview((json.dumps(rec, ensure_ascii=False) + "\n").encode())
            i, end = rec["id"], f.tell()
            try:
                while line:
                    line = line[f.write(line):]
                os.fsync(f.fileno())
            except BaseException:  # a full disk, Ctrl-C: every whole record stays, no part of this one
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


def parser():
    ap = ArgumentParser(prog="sft.py synth", description="synthetic long-instruction SFT data (QA, RAG, "
                        "recursive summaries, 40/30/30) in UltraChat jsonl format")
    ap.add_argument("out", help="output .jsonl (appended to; existing ids are skipped)")
    ap.add_argument("--ckpt", required=True, help="HF-format checkpoint directory or hub id (model, "
                    "tokenizer)")
    ap.add_argument("--domain", required=True, help="token domain of long documents (data.py tokenize, "
                    "demo)")
    ap.add_argument("--tokenizer", default=None, help="default: the checkpoint's tokenizer")
    ap.add_argument("--n", type=number(int, 0), default=1000, help="records to have in OUT in all (ids "
                    "0..N-1)")
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
    ap.add_argument("--stop-after", type=number(int, 1), default=None, help=argparse.SUPPRESS)  # tests
    return ap


def main(argv):
    ap = parser()
    args = ap.parse_args(argv)
    try:
        shard = tuple(int(x) for x in args.shard.split("/"))
        assert len(shard) == 2 and 0 <= shard[0] < shard[1]
    except (ValueError, AssertionError):
        ap.error(f"--shard {args.shard}: expected K/M with 0 <= K < M, e.g. 0/8")
    if args.context_tokens < args.chunk_tokens:
        ap.error(f"--context-tokens {args.context_tokens} must be at least --chunk-tokens "
                 f"{args.chunk_tokens}")
    with one_line_errors(args.out):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # sft.py's start-up handler ends here
        check_output(args.out)
        if os.path.exists(args.ckpt) and not os.path.isdir(args.ckpt) or not os.path.exists(args.ckpt) and \
                not HUB_ID.fullmatch(args.ckpt):
            raise DataError(f"--ckpt {args.ckpt}: no such checkpoint directory (nor a hub id such as "
                            f"princeton-nlp/Llama-3-8B-ProLong-512k-Instruct)")
        domain = open_domain(args.domain)
        tok = load_tokenizer(args.tokenizer or args.ckpt)
        import torch
        from model import Llama
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DataError(f"--device {device}: this machine has no CUDA device (torch sees none)")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        t0 = time.time()
        try:  # model.py says what is wrong with a checkpoint, or a prompt too long for it, as a ValueError
            model = Llama.from_pretrained(args.ckpt, dtype=dtype, device=device).eval()
            synth = Synth(model, tok, domain, args.chunk_tokens, args.context_tokens, args.max_new_tokens,
                          args.temperature, args.top_p, args.seed, args.retries, batch_size=args.batch_size)
            written = run(args.out, synth, args.n, args.stop_after, shard)
        except ValueError as e:
            raise DataError(str(e)) from None
        except KeyboardInterrupt:
            fail(f"interrupted; {args.out} holds every finished record (run again to continue)", 130)
    print(f"synth: {args.out}: wrote {written} records in {time.time() - t0:.1f}s; {args.n} ids in all",
          flush=True)


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def check_output(out):
    """OUT must be a file this run can append to: refused now, before a model is loaded, if it cannot be."""
    if os.path.isdir(out):
        raise DataError(f"{out}: is a directory; name the output .jsonl file (e.g. "
                        f"{os.path.join(out, 'synth.jsonl')})")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise DataError(f"{out}: directory {parent} does not exist")
    if not os.access(out if os.path.exists(out) else parent, os.W_OK):
        raise DataError(f"{out}: not writable")
