"""Supervised fine-tuning, ProLong's third stage: conversations to masked token files (`prepare`), synthetic
long-instruction data (`synth`, in synth.py), and training, which is train.py's loop unchanged.

    python sft.py prepare OUT INPUT... [--holdout N] [--holdout-dir DIR] [--system TEXT] [--strict]
    python sft.py synth OUT.jsonl --ckpt CKPT --domain DIR [--n N] [--chunk-tokens 4096] [--seed 0]
    torchrun --nproc_per_node 8 sft.py configs/sft_ultrachat.py [--key=value ...]   (or python sft.py CONFIG)

The one idea: the loss is on assistant tokens only, and nothing but the data says so. `prepare` writes every
UltraChat-format conversation ({"messages": [{"role", "content"}, ...]}) as one document of Llama-3
chat-format ids (tokenizer.chat_ids, the one function that spells the format) with a NAME.mask that is 1 on
assistant content and its <|eot_id|>; an SFT config points train.py's mixture at such domains with mode "sft"
(data.py), and train.py's loss, the exact mean over the valid labels of a step across ranks, is then the mean
over assistant tokens.

Inputs are .jsonl / .jsonl.gz files (one conversation per line), .parquet files (a `messages` column; needs
pyarrow) or a hub dataset id such as HuggingFaceH4/ultrachat_200k (its `--split`'s parquet files). A malformed
conversation is reported as FILE:LINE and skipped, or stops everything with --strict. `--holdout N` sends a
seeded random N of the usable conversations to a second domain (default OUT-heldout) for held-out
assistant-token loss. Both domains are written through tokenfiles.ShardWriter, so an error, a crash or Ctrl-C
leaves nothing half-written.
"""
import signal

if __name__ == "__main__":  # first of all: a Ctrl-C from here on waits, blocked, until its handler is set
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

import sys  # noqa: E402

import common  # noqa: E402

if __name__ == "__main__":  # Ctrl-C while the rest (or train.py's torch) imports: one line and 130
    common.exit_on_interrupt()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from contextlib import nullcontext  # noqa: E402

from common import ArgumentParser, Malformed, log, number, one_line_errors, read_jsonl
from tokenfiles import DataError, ShardWriter, skip_bad, token_meta
from tokenizer import chat_ids, check_chat, load_tokenizer

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
BATCH = 256  # conversations tokenised together (on a thread pool) between writes


# --------------------------------------------------------------------------------------------- reading inputs

def jsonl_conversations(path):
    """(where, messages) per non-blank line of a .jsonl(.gz) file; (where, Malformed(why)) for an unusable
    line."""
    for where, obj in read_jsonl(path):
        yield where, obj if isinstance(obj, Malformed) else _messages(obj)


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
    """The parquet files of one split of a hub dataset (HuggingFaceH4/ultrachat_200k:
    data/train_sft-*.parquet)."""
    try:
        from huggingface_hub import snapshot_download
        root = snapshot_download(repo_id, repo_type="dataset",
                                 allow_patterns=[f"*{split}-*.parquet", f"*{split}/*.parquet",
                                                 f"{split}.parquet"])
    except ImportError:
        raise DataError(f"{repo_id}: fetching a hub dataset needs huggingface-hub: pip install "
                        f"huggingface-hub") from None
    except Exception as e:  # offline, no such repo, gated, network errors: all end the run in one line
        raise DataError(f"{repo_id}: could not fetch split {split!r} from the hub: "
                        f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names
                   if f.endswith(".parquet"))
    if not files:
        raise DataError(f"{repo_id}: no parquet files for split {split!r} (UltraChat 200k's splits: "
                        f"train_sft, test_sft, train_gen, test_gen)")
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

def with_system(messages, system):
    """The conversation with `system` as its first message, unless it has one (or `system` is None)."""
    if system is None or not isinstance(messages, list) or messages and isinstance(messages[0], dict) and \
            messages[0].get("role") == "system":
        return messages
    return [{"role": "system", "content": system}] + messages


def check_outputs(out, holdout_dir, files):
    """Refuse two outputs in one directory, and an output that is one of the inputs, before anything is
    read."""
    where = {os.path.realpath(out): out}
    if holdout_dir is not None:
        if os.path.realpath(holdout_dir) in where:
            raise DataError(f"--holdout-dir {holdout_dir} is the output {out} itself: the held-out "
                            f"conversations need a directory of their own")
        where[os.path.realpath(holdout_dir)] = holdout_dir
    for f in files:
        if os.path.realpath(f) in where:
            raise DataError(f"{where[os.path.realpath(f)]}: is also an input; write the domain elsewhere")


def prepare(out, inputs, tokenizer=None, strict=False, system=None, holdout=0, holdout_dir=None, seed=0,
            split="train_sft", threads=None, prefix="part"):
    """Tokenise conversations into the masked domain `out` (and `holdout` of them into `holdout_dir`). Returns
    counts; raises DataError (one line) for anything the user can fix, with nothing written."""
    tok = load_tokenizer(tokenizer)
    files = input_files(inputs, split)
    holdout_dir = holdout_dir or os.path.normpath(out) + "-heldout" if holdout else None
    check_outputs(out, holdout_dir, files)
    held = set()
    if holdout:  # a first pass, parsing only: which records are usable, so that exactly N are held out
        usable = []
        for k, (where, messages) in enumerate(conversations(files)):
            try:
                if isinstance(messages, Malformed):
                    raise DataError(messages)
                check_chat(with_system(messages, system))
                usable.append(k)
            except DataError as e:
                if strict:
                    raise DataError(f"{where}: {e} (--strict: stopping, nothing written)") from None
        if holdout >= len(usable):
            raise DataError(f"--holdout {holdout}: the input has only {len(usable)} usable conversations "
                            f"(and at least one must be left to train on)")
        held = {usable[i] for i in random.Random(seed).sample(range(len(usable)), holdout)}
    meta = token_meta(tok, "sft.py prepare " + " ".join(inputs))
    stats = {k: dict(conversations=0, tokens=0, assistant=0) for k in (False, True)}
    problems, t0, last = [], time.time(), time.time()

    def encode(item):
        where, messages = item
        if isinstance(messages, Malformed):
            return where, messages
        try:
            return where, chat_ids(tok, with_system(messages, system))
        except DataError as e:
            return where, Malformed(e)

    held_meta = dict(meta, source=meta["source"] + " (held out)")
    with ShardWriter(out, meta, prefix, with_mask=True) as train_writer, \
            ShardWriter(holdout_dir, held_meta, prefix, with_mask=True) if holdout else nullcontext() as held_writer:
        writers = {False: train_writer, True: held_writer}
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
                        skip_bad(problems, f"{where}: {result}", strict)
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
        if not train_writer.documents:
            raise DataError(f"{' '.join(inputs)}: no usable conversations ({len(problems)} malformed, reported "
                            f"above); nothing written")
        held_out = stats[True]["conversations"]
        if held_out != holdout:  # the first pass and this one disagree: never silently fewer
            raise DataError(f"{' '.join(inputs)}: the input changed while it was read ({held_out} of --holdout "
                            f"{holdout} conversations held out); nothing written")
    if len(problems) > 100:
        log(f"... and {len(problems) - 100} more skipped conversations")
    return dict(train=stats[False], heldout=stats[True] if holdout else None, skipped=len(problems),
                seconds=time.time() - t0, holdout_dir=holdout_dir)


# ----------------------------------------------------------------------------------------------- command line

def prepare_parser():
    ap = ArgumentParser(prog="sft.py prepare", description="UltraChat-format conversations to a masked token "
                        "domain (Llama-3 chat format, mask = assistant content + <|eot_id|>)")
    ap.add_argument("out", help="domain directory to write (must not hold part-*.json shards yet)")
    ap.add_argument("inputs", nargs="+", help=".jsonl / .jsonl.gz / .parquet files, or a hub dataset id "
                                              "(e.g. HuggingFaceH4/ultrachat_200k)")
    ap.add_argument("--split", default="train_sft", help="the split of a hub dataset (default train_sft)")
    ap.add_argument("--system", default=None, help="a system message for conversations that have none")
    ap.add_argument("--strict", action="store_true",
                    help="stop at the first malformed conversation, write nothing")
    ap.add_argument("--holdout", type=number(int, 0), default=0,
                    help="hold out a seeded random N conversations")
    ap.add_argument("--holdout-dir", default=None, help="where they go (default: OUT-heldout)")
    ap.add_argument("--seed", type=number(int, 0), default=0)
    ap.add_argument("--tokenizer", default=None, help="tokenizer.model path, directory or hub id (default: "
                                                      "llama-models' Llama-3 file)")
    ap.add_argument("--threads", type=number(int, 1), default=None)
    return ap


def prepare_main(argv):
    args = prepare_parser().parse_args(argv)
    with one_line_errors(args.out):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # imports done: now Ctrl-C cleans up
        r = prepare(args.out, args.inputs, args.tokenizer, args.strict, args.system, args.holdout,
                    args.holdout_dir, args.seed, args.split, args.threads)
    line = lambda s: (f"{s['conversations']:,} conversations, {s['tokens']:,} tokens, {s['assistant']:,} assistant "
                      f"tokens ({100 * s['assistant'] / max(s['tokens'], 1):.0f}%)")
    print(f"prepare: {args.out}: {line(r['train'])}" + (f"; {r['holdout_dir']}: {line(r['heldout'])}"
          if r["heldout"] else "") + f"; skipped {r['skipped']:,} malformed; {r['seconds']:.1f}s", flush=True)


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
    common.exit_process(main)  # a torchrun rank's exit skips the teardown that can abort gloo (see there)
