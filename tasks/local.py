"""Local copies of the Hugging Face datasets that HELMET loads by name (its ICL, LongQA and Summ data), read from
--helmet-data DIR: where each split lives, its rows read lazily, and document lengths counted and cut as HELMET
counts and cuts them, in Llama-2 tokens.

The one idea: HELMET indexes rows by position after seeded shuffles, so each split is one file with the rows in the
split's Hugging Face order and the Hugging Face column names, DIR/<folder>/<split>.jsonl (always readable) or
.parquet (needs pyarrow):
    DIR/icl/trec/{train,test}              text, coarse_label, fine_label        (CogComp/trec)
    DIR/icl/banking77/{train,test}         text, label                           (PolyAI/banking77)
    DIR/icl/clinc150/{train,validation}    text, intent                          (clinc_oos, config "plus")
    DIR/icl/nlu/train                      text, label                           (xingkunliuxtracta/nlu_evaluation_data)
    DIR/narrativeqa/{train,test}           document {id, text, ...}, question {text}, answers [{text}]   (narrativeqa;
                                           the train split is read for demos only and may omit `document`)
    DIR/infbench/longbook_{qa,choice,sum}_eng.jsonl   InfiniteBench's own files: id, context, input, answer, options
    DIR/multi_lexsum/{train,validation}    id, sources, summary/long, summary/short   (allenai/multi_lexsum v20230518;
                                           train is read for demos only and may omit `sources`)
and, optional, the key-point files of HELMET's data/ folder that its GPT-4o judge reads (scripts/eval_gpt4_summ.py):
    DIR/infbench/longbook_sum_eng_keypoints.jsonl (id, keypoints), DIR/multi_lexsum/multi_lexsum_val.jsonl
    (id, summary/short_keypoints). So HELMET's own data/ folder with these copies added is a valid DIR.
Lengths: HELMET counts them in Llama-2 tokens; `length_tok` (default: the checkpoint's tokenizer; pass Llama-2's to
match HELMET) counts them here, with one BOS as Llama-2's tokenizer adds.
"""
import hashlib
import json
import os

import numpy as np

from common import UserError, log
from tasks.common import Task, shuffle_order

LAYOUT = {
    "trec": "DIR/icl/trec/{train,test}.jsonl|.parquet with text, coarse_label, fine_label (HF CogComp/trec)",
    "banking77": "DIR/icl/banking77/{train,test}.jsonl|.parquet with text, label (HF PolyAI/banking77)",
    "clinc150": "DIR/icl/clinc150/{train,validation}.jsonl|.parquet with text, intent (HF clinc_oos, plus)",
    "nlu": "DIR/icl/nlu/train.jsonl|.parquet with text, label (HF xingkunliuxtracta/nlu_evaluation_data)",
    "narrativeqa": "DIR/narrativeqa/{train,test}.jsonl|.parquet with document.text, question.text, answers[].text "
                   "(HF narrativeqa)",
    "infbench": "DIR/infbench/longbook_{qa,choice,sum}_eng.jsonl (InfiniteBench's files: id, context, input, answer, "
                "options)",
    "multi_lexsum": "DIR/multi_lexsum/{train,validation}.jsonl|.parquet with id, sources, summary/long, summary/short "
                    "(HF allenai/multi_lexsum v20230518)",
}
# Length filters in Llama-2 tokens: NarrativeQA keeps > 131072 (its two filters: > 131072, then >= 131072);
# InfBench and Multi-LexSum keep >= 65536. Module constants so that tests can use small documents.
MIN_TOKENS = {"narrativeqa": 131073, "infbench": 65536, "multi_lexsum": 65536}
OMITTED = " ... [the rest of the text is omitted]"


def split_path(data_dir, folder, split):
    """DIR/folder/split.jsonl, else .parquet where only that exists."""
    base = os.path.join(data_dir, folder, split)
    return base + ".parquet" if os.path.exists(base + ".parquet") and not os.path.exists(base + ".jsonl") \
        else base + ".jsonl"


class Jsonl:
    """A JSON-lines file whose rows are parsed when read: NarrativeQA and Multi-LexSum hold whole books per row,
    and only a few rows are ever needed whole, so we keep byte offsets, not rows."""

    def __init__(self, path):
        self.path, self.offsets, pos = path, [], 0
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    self.offsets.append(pos)
                pos += len(line)

    def __len__(self):
        return len(self.offsets)

    def _parse(self, line, i):
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise UserError(f"{self.path}: row {i + 1}: invalid UTF-8 at byte {e.start} of the line") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{self.path}: row {i + 1}: not a JSON line ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{self.path}: row {i + 1}: expected a JSON object, found {line[:60].decode('utf-8')}")
        return row

    def __getitem__(self, i):
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            return self._parse(f.readline(), i)

    def __iter__(self):
        with open(self.path, "rb") as f:
            yield from (self._parse(line, i) for i, line in enumerate(line for line in f if line.strip()))


def rows(path, columns=None):
    """The rows of a split, in file order: lazily from .jsonl, or the given columns of a .parquet file."""
    if path.endswith(".jsonl"):
        return Jsonl(path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow), or give the split as "
                        f".jsonl") from None
    try:
        return pq.read_table(path, columns=columns).to_pylist()
    except Exception as e:  # pyarrow's errors for a missing column or a damaged file
        raise UserError(f"{path}: {e}") from None


def keypoints(data_dir, rel, field, task):
    """{id: key points} from HELMET's key-point file, or None (with a note) when DIR does not hold it."""
    path = os.path.join(data_dir, rel)
    if not os.path.exists(path):
        log(f"{task}: no {path}: records carry no key points (the GPT-4o judge needs them)")
        return None
    return {str(d["id"]): d[field] for d in Jsonl(path)}


def unseeded_shuffle_seeds(seed, count):
    """The seeds of HELMET's first `count` unseeded `Dataset.shuffle()` calls, in order. datasets takes the seed from
    numpy's global Mersenne state (the word at its position, the first word when the position is 624, as right after
    seeding) and steps it by one np.random.random(); HELMET's state is np.random.seed(seed), which
    transformers.set_seed(seed) runs when the model loads, before any task. Replayed on a private RandomState."""
    state, seeds = np.random.RandomState(seed), []
    for _ in range(count):
        _, key, pos, *_ = state.get_state()
        seeds.append(int(key[pos] if pos < 624 else key[0]))
        state.random_sample()
    return seeds


def train_demos(pool, shuffle_seed, shots):
    """NarrativeQA / Multi-LexSum demos: the first `shots` of `pool` after an unseeded train.shuffle() that drew
    `shuffle_seed` (unseeded_shuffle_seeds)."""
    return [pool[j] for j in shuffle_order(len(pool), shuffle_seed)[:shots]]


class Lengths:
    """Token counts as Llama-2's tokenizer gives them (with its BOS), cached by text: InfBench and Multi-LexSum rows
    repeat books, and the filters count every row."""

    def __init__(self, tok):
        self.tok, self.cache = tok, {}

    def ids(self, text):
        return self.tok.encode(text)

    def __call__(self, text):
        key = hashlib.sha1(text.encode("utf-8")).digest()
        if key not in self.cache:
            self.cache[key] = 1 + len(self.ids(text))
        return self.cache[key]

    def truncate(self, text, max_length):
        """truncate_llama2: over max_length tokens, keep the text of the first max_length - len(BOS + marker) tokens
        (HELMET cuts at that token's end offset; we decode the kept tokens and cut the text where they end)."""
        ids = self.ids(text)
        if 1 + len(ids) <= max_length:
            return text
        cut = self.tok.decode(ids[:max(0, max_length - 1 - len(self.ids(OMITTED)))])
        if not text.startswith(cut):  # a token ends inside a character, or the decoder drops a leading space
            kept = os.path.commonprefix([cut, text])
            # a last token ending inside a character: its end offset is that character's end, which HELMET keeps
            cut = text[:len(kept) + 1] if cut.endswith("\ufffd") and len(cut) > len(kept) else kept
        return text[:len(cut)] + OMITTED


def dataset_task(name, files, layout, read, **spec):
    """A task read from local copies of HF datasets: `files(data_dir)` are the files it needs (listed by default
    only when DIR holds them all), `read(length, run)` makes its records; a missing column is an error naming the
    layout DIR should have."""
    def records(length, run):
        if not all(os.path.exists(f) for f in files(run.data_dir)):
            return None, f"{name} @ {length}: no data under {run.data_dir} ({files(run.data_dir)[0]})"
        try:
            return read(length, run), f"HELMET's {name} from {run.data_dir}"
        except KeyError as e:
            raise UserError(f"{name}: a row has no {e} field; expected {layout}") from None
        except ValueError as e:  # a field of the wrong type, an empty split (the message names the file)
            raise UserError(f"{name}: {e}") from None

    return Task(name, records=records, available=lambda d: all(os.path.exists(f) for f in files(d)), **spec)


def document_task(name, files, layout, reserve, read, **spec):
    """A LongQA / Summ task: `read(run, shots, keep, count)` makes records whose documents are cut to `keep` =
    length - `reserve` tokens (HELMET's name postfixes, e.g. narrativeqa_130772) and counted by `count` (Lengths);
    shots default to HELMET's 2 (configs/longqa.yaml, summ.yaml)."""
    def records(length, run):
        keep = length - reserve
        if keep <= 0:
            raise UserError(f"{name}: {length} tokens leave no context (HELMET reserves {reserve} tokens for the "
                            f"instructions and the generation)")
        count = Lengths(run.length_tok or run.tok)
        out = read(run, 2 if run.shots is None else run.shots, keep, count)
        log(f"{name} at {length}: {len(out)} records; lengths (filters, cut to {keep}) in tokens of "
            f"{getattr(count.tok, 'name', 'length_tok')}")
        return out
    return dataset_task(name, files, layout, records, chat=True, **spec)
