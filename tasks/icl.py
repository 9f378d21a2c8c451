"""HELMET's ICL tasks (TREC coarse and fine, Banking77, Clinc150, NLU): many-shot classification with the labels
mapped to random integers, read from local copies of the Hugging Face datasets (tasks/local.py's layout).

The one idea: everything is seeded per test sample, as HELMET's data.py does it. The test split is shuffled with
`seed` and label-balanced to `samples` (HELMET: 500) when it has more rows; then local_seed = (int(sha256(text)) +
seed) % 2**31 draws label-balanced demos from train and the map from labels to integers. NLU has one split, cut by
datasets' train_test_split(test_size=0.1, seed). Shot counts are HELMET's per length (scripts/generate_configs.py).
"""
import math
import os
import random

from common import log
from tasks.common import calculate_metrics, expect, parse_output, sha_seed, shuffle_order
from tasks.local import LAYOUT, dataset_task, rows, split_path

# "{{label}}" is HELMET's: after .format the prompt says "label: {label}". Note the space before "\n\n".
ICL = ("Use the provided mapping from the text to label to assign a label to the text. Only output \"label: "
       "{{label}}\" and nothing else. \n\n{context}\n\n{question}", "label:")
ICL_SAMPLES = 500  # configs/icl.yaml: max_test_samples

# generate_configs.py's "{N}shot_balance" postfixes at 4K, 8K, 16K, 32K, 64K, 128K.
_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)
ICL_SHOTS = {t: dict(zip(_LENGTHS, n)) for t, n in {
    "icl_trec_coarse": (200, 400, 800, 1600, 3300, 6600),
    "icl_trec_fine": (200, 400, 800, 1600, 3200, 6400),
    "icl_banking77": (180, 360, 720, 1450, 2900, 5900),
    "icl_clinic150": (220, 440, 880, 1750, 3525, 7050),
    "icl_nlu": (250, 510, 1020, 2040, 4080, 8296)}.items()}


def icl_shots(task, length):
    """HELMET's shot count at `length`; between or beyond its lengths, the count of the largest HELMET length not
    above `length` (else the smallest) scaled by length / that length."""
    table = ICL_SHOTS[task]
    if length in table:
        return table[length]
    base = max((L for L in table if L <= length), default=min(table))
    shots = max(1, round(table[base] * length / base))
    log(f"{task}: HELMET has no shot count for {length} tokens; using {shots} ({table[base]} at {base}, scaled)")
    return shots


def by_label(items):
    """HELMET's balance_labels groups: one list per label, labels in order of first appearance."""
    groups = {}
    for item in items:
        groups.setdefault(item[2], []).append(item)
    return list(groups.values())


def balance(groups, shots, seed):
    """HELMET's balance_labels(data, shots, seed), the same random.Random(seed) calls in the same order: per label,
    sample rounds % size indices, topped up by samples without replacement; round k takes one item per label; each
    round shuffled; the first `shots`."""
    rand = random.Random(seed)
    rounds = math.ceil(shots / len(groups))
    sets = [[] for _ in range(rounds)]
    for items in groups:
        picks = rand.sample(range(len(items)), rounds % len(items))
        while len(picks) < rounds:
            picks += rand.sample(range(len(items)), min(rounds - len(picks), len(items)))
        for k, j in enumerate(picks):
            sets[k].append(items[j])
    for s in sets:
        rand.shuffle(s)
    return [item for s in sets for item in s][:shots]


def icl_records(name, folder, train_split, test_split, label, num_labels, length, run):
    train_path, *test_path = icl_files(folder, train_split, test_split)(run.data_dir)
    shots = icl_shots(name, length) if run.shots is None else run.shots
    rows_ = [row(i, r, label, train_path) for i, r in enumerate(rows(train_path, ["text", label]))]
    if test_split is None:
        # datasets' train_test_split(test_size=0.1, seed): n_test = ceil(0.1 * n) (that float product), and
        # permutation = default_rng(seed).permutation(n); test = permutation[:n_test], train = the rest, both in
        # permutation order (arrow_dataset.py, unstratified branch; the same since datasets 1.x).
        perm = shuffle_order(len(rows_), run.seed)
        n_test = math.ceil(0.1 * len(rows_))
        train, test = [rows_[i] for i in perm[n_test:]], [rows_[i] for i in perm[:n_test]]
    else:
        train = rows_
        test = [row(i, r, label, test_path[0]) for i, r in enumerate(rows(test_path[0], ["text", label]))]
    for path, split in ((train_path, train), (test_path[0] if test_path else train_path, test)):
        if not split:  # balance_labels would divide by zero, a score would be NaN
            raise ValueError(f"{path}: no rows" + (" after the 90/10 split" if test_split is None else ""))
    if run.samples is not None and len(test) > run.samples:  # HELMET: shuffle(seed), balance_labels(samples, seed)
        test = [test[i] for i in shuffle_order(len(test), run.seed)]
        # 985b73b: shuffle(seed).select(range(samples)), no balancing (140d684, 2025-01-13, added it)
        test = test[:run.samples] if run.helmet_version == "985b73b" else balance(by_label(test), run.samples,
                                                                                    run.seed)
    pools = by_label(train)
    out = []
    for i, text, lab in test:
        local = sha_seed(text, run.seed)
        demos = balance(pools, shots, local)
        mapping = list(range(num_labels))
        random.Random(local).shuffle(mapping)  # HELMET: random.seed(local); random.shuffle (the same draws)
        context = "\n\n".join(f"{t}\nlabel: {mapping[d]}" for _, t, d in demos)
        out.append({"context": context, "question": text, "answer": str(mapping[lab]), "id": i})
    return out


def row(i, r, label, path):
    """(index, text, label) of a split's row, its fields checked."""
    where = f"{path}: row {i + 1}"
    expect(r, "text", str, "the text to classify", where)
    try:
        return i, r["text"], int(r[label])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {label!r} is {r[label]!r}: expected the label's integer id") from None


def icl_files(folder, train, test):
    return lambda data_dir: [split_path(data_dir, os.path.join("icl", folder), s) for s in (train, test) if s]


def score(output, rec):
    """HELMET scores the parsed label only, not the max with the raw output."""
    return calculate_metrics(parse_output(output, "label:"), rec["answer"], rouge=False)


def icl(name, folder, train, test, label, num_labels):
    """An ICL task: `folder` under DIR/icl with its train and test splits (test None: NLU's one split is cut)."""
    return dataset_task(name, icl_files(folder, train, test), LAYOUT[folder],
                        lambda length, run: icl_records(name, folder, train, test, label, num_labels, length, run),
                        category="ICL", templates=ICL, gen_len=20, stop_newline=True, metric="exact_match",
                        score=score, samples=ICL_SAMPLES)


trec_coarse = icl("icl_trec_coarse", "trec", "train", "test", "coarse_label", 6)
trec_fine = icl("icl_trec_fine", "trec", "train", "test", "fine_label", 50)
banking77 = icl("icl_banking77", "banking77", "train", "test", "label", 77)
clinic150 = icl("icl_clinic150", "clinc150", "train", "validation", "intent", 151)
nlu = icl("icl_nlu", "nlu", "train", None, "label", 68)
