"""
Supervised fine-tuning, ProLong's third stage: the 512K base model fine-tuned on UltraChat conversations with the
loss on assistant tokens only (paper: 250 steps of 64 x 64K = 4M tokens, about 1B tokens, i.e. several passes over
the released data; AdamW 0.9/0.95, weight decay 0.1, clip 1.0, LR 2e-5 cosine to 2e-6 after 5% warmup, RoPE base as
the checkpoint has it, no sequence parallelism). Two commands:

    python sft.py prepare OUT INPUT... [--holdout N] [--system TEXT] [--strict]
    python sft.py synth OUT.jsonl --ckpt CKPT --domain DIR [--n N] [--chunk-tokens 4096] [--seed 0]
    torchrun --nproc_per_node 8 sft.py configs/sft_ultrachat.py [--key=value ...]   (or python sft.py CONFIG)

`prepare` turns UltraChat-format conversations ({"messages": [{"role", "content"}, ...]}) into a masked domain
directory: every conversation becomes one document of Llama-3 chat-format ids (tokenizer.chat_ids, the one function
that owns the format) with a NAME.mask marking assistant content and its <|eot_id|>, the only tokens trained on.
Inputs are .jsonl / .jsonl.gz files (one conversation per line), .parquet files (needs pyarrow; a row counts as a
line in messages) or a hub dataset id such as HuggingFaceH4/ultrachat_200k (its `--split`'s parquet files, fetched
with huggingface-hub). A malformed conversation (invalid JSON, no messages list, an unknown role, empty content, no
assistant turn) is reported as FILE:LINE and skipped, or stops everything with --strict. `--holdout N` sends a seeded
random N of the conversations to a second domain (default OUT-heldout) for held-out assistant-token loss. Writing
goes through data.py's ShardWriter: temporary names, renamed only when everything succeeded, so a crash or Ctrl-C
leaves nothing half-written.

Training is train.py's loop unchanged (`train.main`): an SFT config only points the mixture at masked domains with
mode "sft" (data.py: conversations packed into seq_len, each its own document, a conversation that does not fit is
truncated and its remainder dropped, labels only where the mask is 1). train.py's loss is already the exact mean over
the valid labels of the whole step across ranks, so it is the token-weighted mean over assistant tokens.
"""
import argparse
import gzip
import json
import os
import random
import re
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

from data import DataError, ShardWriter, load_tokenizer, log, one_line_errors
from tokenizer import chat_ids

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
BATCH = 256  # conversations tokenised together (on a thread pool) between writes


class Malformed(str):
    """Why a record is not a usable conversation (a str subclass, so that a record whose messages are a plain
    string is still told apart from a reader's report)."""


# ------------------------------------------------------------------------------------------------ reading inputs

def jsonl_conversations(path):
    """(where, messages) per non-blank line of a .jsonl(.gz) file; (where, Malformed(why)) for an unusable line."""
    n = 0
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield f"{path}:{n}", Malformed(f"invalid UTF-8 at byte {e.start} of the line")
                    continue
                except json.JSONDecodeError as e:
                    yield f"{path}:{n}", Malformed(f"malformed JSON ({e.msg} at column {e.colno})")
                    continue
                yield f"{path}:{n}", _messages(obj)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt gzip data after line {n} ({e}); download or compress it "
                        f"again") from None


def parquet_conversations(path):
    """(where, messages) per row of a parquet file with a `messages` column; row numbers count from 1."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
        if "messages" not in pf.schema_arrow.names:
            raise DataError(f"{path}: no 'messages' column (found: {', '.join(pf.schema_arrow.names)})")
        n = 0
        for batch in pf.iter_batches(batch_size=1024, columns=["messages"]):
            for messages in batch.column(0).to_pylist():
                n += 1
                yield f"{path}:{n}", _messages({"messages": messages})
    except DataError:
        raise
    except Exception as e:  # pyarrow's ArrowInvalid and friends: a file that is not parquet, or damaged
        raise DataError(f"{path}: unreadable parquet file ({type(e).__name__}: {e})") from None


def _messages(obj):
    if not isinstance(obj, dict) or "messages" not in obj:
        found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        return Malformed(f"no 'messages' field (found: {found})")
    return obj["messages"]


def hub_files(repo_id, split):
    """The parquet files of one split of a hub dataset (HuggingFaceH4/ultrachat_200k: data/train_sft-*.parquet)."""
    try:
        from huggingface_hub import snapshot_download
        root = snapshot_download(repo_id, repo_type="dataset",
                                 allow_patterns=[f"*{split}-*.parquet", f"*{split}/*.parquet", f"{split}.parquet"])
    except ImportError:
        raise DataError(f"{repo_id}: fetching a hub dataset needs huggingface-hub: pip install huggingface-hub") \
            from None
    except Exception as e:  # offline, no such repo, gated, network errors: all end the run in one line
        raise DataError(f"{repo_id}: could not fetch split {split!r} from the hub: "
                        f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names if f.endswith(".parquet"))
    if not files:
        raise DataError(f"{repo_id}: no parquet files for split {split!r} (UltraChat 200k's splits: train_sft, "
                        f"test_sft, train_gen, test_gen)")
    return files


def input_files(inputs, split):
    """Check every input before any work: local .jsonl/.jsonl.gz/.parquet files, or hub dataset ids."""
    files = []
    for x in inputs:
        if os.path.exists(x):
            if not os.path.isfile(x) or not x.endswith((".jsonl", ".jsonl.gz", ".parquet")):
                raise DataError(f"{x}: not a .jsonl, .jsonl.gz or .parquet file")
            files.append(x)
        elif HUB_ID.fullmatch(x) and not x.endswith((".jsonl", ".gz", ".parquet")):
            files += hub_files(x, split)
        else:
            raise DataError(f"{x}: no such file (nor a hub dataset id such as HuggingFaceH4/ultrachat_200k)")
    return files


def conversations(files):
    for path in files:
        yield from (parquet_conversations if path.endswith(".parquet") else jsonl_conversations)(path)


# ------------------------------------------------------------------------------------------------ prepare

def prepare(out, inputs, tokenizer=None, strict=False, system=None, holdout=0, holdout_dir=None, seed=0,
            split="train_sft", threads=None, prefix="part"):
    """Tokenise conversations into the masked domain `out` (and `holdout` of them into `holdout_dir`). Returns
    counts; raises DataError (one line) for anything the user can fix, with nothing written."""
    tok = load_tokenizer(tokenizer)
    files = input_files(inputs, split)
    held = set()
    if holdout:
        total = sum(1 for _ in conversations(files))  # a first pass, parsing only: how many records
        if holdout >= total:
            raise DataError(f"--holdout {holdout}: the input has only {total} conversations")
        held = set(random.Random(seed).sample(range(total), holdout))  # = the last N of a seeded shuffle
    meta = {"tokenizer": tok.name, "tokenizer_sha256": tok.sha256, "n_vocab": tok.n_vocab, "bos_id": tok.bos_id,
            "eos_id": tok.eos_id, "source": "sft.py prepare " + " ".join(inputs)}
    writers = {False: ShardWriter(out, meta, prefix, with_mask=True)}
    stats = {k: dict(conversations=0, tokens=0, assistant=0) for k in (False, True)}
    problems, t0, last = [], time.time(), time.time()

    def encode(item):
        where, messages = item
        if isinstance(messages, Malformed):
            return where, messages
        if system is not None and isinstance(messages, list) and not (
                messages and isinstance(messages[0], dict) and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": system}] + messages
        try:
            return where, chat_ids(tok, messages)
        except DataError as e:
            return where, Malformed(e)

    try:
        if holdout:
            writers[True] = ShardWriter(holdout_dir, dict(meta, source=meta["source"] + " (held out)"), prefix,
                                        with_mask=True)
        with ThreadPoolExecutor(threads or os.cpu_count()) as pool:
            k, source = 0, conversations(files)
            while True:
                batch = [next(source, None) for _ in range(BATCH)]
                batch = [b for b in batch if b is not None]
                if not batch:
                    break
                for where, result in pool.map(encode, batch):  # in input order
                    is_held, k = k in held, k + 1
                    if isinstance(result, Malformed):
                        if strict:
                            raise DataError(f"{where}: {result} (--strict: stopping, nothing written)")
                        problems.append(where)
                        if len(problems) <= 100:
                            log(f"skipped {where}: {result}")
                        continue
                    ids, mask = result
                    writers[is_held].add(ids, mask)
                    writers[is_held].end_document()
                    s = stats[is_held]
                    s["conversations"] += 1
                    s["tokens"] += len(ids)
                    s["assistant"] += int(sum(mask))
                if time.time() - last > 3:
                    last = time.time()
                    n = stats[False]["conversations"] + stats[True]["conversations"]
                    log(f"prepare: {n:,} conversations, {n / (last - t0):,.0f} conversations/s")
        for is_held, w in writers.items():
            if not w.documents:
                raise DataError(f"{' '.join(inputs)}: no usable conversations{' to hold out' if is_held else ''} "
                                f"({len(problems)} malformed, reported above); nothing written")
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    if len(problems) > 100:
        log(f"... and {len(problems) - 100} more skipped conversations")
    return dict(train=stats[False], heldout=stats[True] if holdout else None, skipped=len(problems),
                seconds=time.time() - t0)


# ------------------------------------------------------------------------------------------------ command line

def prepare_main(argv):
    ap = argparse.ArgumentParser(prog="sft.py prepare", description="UltraChat-format conversations to a masked "
                                 "token domain (Llama-3 chat format, mask = assistant content + <|eot_id|>)")
    ap.add_argument("out", help="domain directory to write (must not hold part-*.json shards yet)")
    ap.add_argument("inputs", nargs="+", help=".jsonl / .jsonl.gz / .parquet files, or a hub dataset id "
                                              "(e.g. HuggingFaceH4/ultrachat_200k)")
    ap.add_argument("--split", default="train_sft", help="the split of a hub dataset (default train_sft)")
    ap.add_argument("--system", default=None, help="a system message for conversations that have none")
    ap.add_argument("--strict", action="store_true", help="stop at the first malformed conversation, write nothing")
    ap.add_argument("--holdout", type=int, default=0, help="hold out a seeded random N conversations")
    ap.add_argument("--holdout-dir", default=None, help="where they go (default: OUT-heldout)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default=None, help="tokenizer.model path, directory or hub id (default: "
                                                      "llama-models' Llama-3 file)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.holdout < 0:
        ap.error("--holdout must be >= 0")
    holdout_dir = args.holdout_dir or os.path.normpath(args.out) + "-heldout"
    with one_line_errors(args.out):
        r = prepare(args.out, args.inputs, args.tokenizer, args.strict, args.system, args.holdout, holdout_dir,
                    args.seed, args.split, args.threads)
    line = lambda s: (f"{s['conversations']:,} conversations, {s['tokens']:,} tokens, {s['assistant']:,} assistant "
                      f"tokens ({100 * s['assistant'] / max(s['tokens'], 1):.0f}%)")
    print(f"prepare: {args.out}: {line(r['train'])}" + (f"; {holdout_dir}: {line(r['heldout'])}" if r["heldout"]
          else "") + f"; skipped {r['skipped']:,} malformed; {r['seconds']:.1f}s", flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "prepare":
        return prepare_main(argv[1:])
    if argv and argv[0] == "synth":  # synthetic long-instruction data: synth.py
        import synth
        return synth.main(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + __doc__.split("\n\n")[1].rstrip())
        sys.exit(0 if argv else 2)
    import train  # the training loop: no second one here
    train.main(argv)


if __name__ == "__main__":
    import train
    train.exit_process(main)  # a torchrun rank's exit skips the teardown that can abort gloo (see there)
