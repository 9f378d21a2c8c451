"""HELMET's tasks, one registry: every task evaluate.py can run, by name, in the order it runs them, and the ways
of averaging them into tables (HELMET's categories, the paper's, RULER's average).

The one idea: a task is a `Task` record (tasks/common.py) defined in its family's file (recall.py, rag.py, icl.py,
longqa.py, summ.py, ruler.py); adding one is its definition there plus one line here. The runner loops over this
registry and asks nothing else: not which file a task comes from, not what its name starts with.
"""
import dataclasses
import os

import numpy as np

from common import UserError
from tasks import icl, longqa, rag, recall, ruler, summ
from tasks.common import Run, Task  # noqa: F401  (what a caller of the registry needs)

TASKS = {t.name: t for t in [
    recall.json_kv, recall.niah_mk_2, recall.niah_mk_3, recall.niah_mv, recall.vt,
    rag.kilt_nq, rag.kilt_triviaqa, rag.kilt_hotpotqa, rag.kilt_popqa, rag.msmarco,
    icl.trec_coarse, icl.trec_fine, icl.banking77, icl.clinic150, icl.nlu,
    longqa.narrativeqa, longqa.infbench_qa, longqa.infbench_choice,
    summ.infbench_sum, summ.multi_lexsum,
    ruler.niah_s_1, ruler.niah_s_2, ruler.niah_s_3, ruler.niah_mk_1, ruler.niah_mq, ruler.cwe, ruler.fwe,
    ruler.qa_1, ruler.qa_2,
]}
GENERATED = [name for name, t in TASKS.items() if t.synthetic]  # what can run without --helmet-data
SYNTHETIC = [name for name in GENERATED if name not in ruler.ONLY_HERE]  # what runs then by default
RULER = ruler.RULER  # --tasks ruler: RULER's 13 tasks, as HELMET's configs/ruler.yaml lists them

# Two ways to average tasks into categories: HELMET's (scripts/collect_results.py custom_avgs), and the ProLong
# paper's own (its Table 13), which keeps fewer tasks per category.
CATEGORIES = {
    "Recall": ["json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv"],
    "RAG": ["kilt_nq", "kilt_triviaqa", "kilt_hotpotqa", "kilt_popqa_3"],
    "Re-rank": ["msmarco_rerank_psg"],
    "ICL": ["icl_trec_coarse", "icl_trec_fine", "icl_banking77", "icl_clinic150", "icl_nlu"],
    "LongQA": ["narrativeqa", "infbench_qa_eng", "infbench_choice_eng"],
    "Summ": ["infbench_sum_eng", "multi_lexsum"],
}
PAPER_CATEGORIES = {
    "Recall": ["json_kv"],
    "RAG": ["kilt_nq", "kilt_hotpotqa", "kilt_popqa_3"],
    "Re-rank": ["msmarco_rerank_psg"],
    "ICL": ["icl_trec_coarse", "icl_trec_fine", "icl_nlu", "icl_banking77", "icl_clinic150"],
    "QA": ["narrativeqa"],
    "Summ": ["multi_lexsum"],
}
# HELMET's commits whose protocol the runner can follow (--helmet-version): 4526dfb (April 2025, the default: the
# code behind the published HELMET numbers) and 985b73b (2024-10-04, HELMET's first public commit, the closest to
# the ProLong paper's evaluation). What 985b73b defines differently in a task's record is here; what it does
# differently inside `records` (no length filters for NarrativeQA, InfBench and Multi-LexSum, ICL's first 100
# shuffled test rows without label balancing) reads Run.helmet_version. Its RAG / re-rank demos (Python's salted
# str hash) and ICL demos (the global `random` in forked workers) cannot be replayed: 4526dfb's seeded draws stay.
VERSIONS = {
    "4526dfb": {},
    "985b73b": {
        # "mv_niah" in "ruler_niah_mv" is False there: the plural templates came with 06526f1 (2025-02-06)
        "ruler_niah_mv": {"templates": recall.RULER_NIAH}, "ruler_niah_mq": {"templates": recall.RULER_NIAH},
        **{t.name: {"samples": 100} for t in (icl.trec_coarse, icl.trec_fine, icl.banking77, icl.clinic150,
                                              icl.nlu)},  # 500 from 0e8a761 (2025-01-17)
        # HotpotQA's _dep6 files and PopQA's own train demos until 35587b8 (2024-10-07)
        "kilt_hotpotqa": rag.kilt("kilt_hotpotqa", "hotpotqa-dev-multikilt_1000_k{k}_dep6",
                                  "hotpotqa-train-multikilt_1000_k3_dep6"),
        "kilt_popqa_3": rag.kilt("kilt_popqa_3", "popqa_test_1000_k{k}_dep6", "popqa_train_1000_k3_dep6"),
    },
}
_BASE = dict(TASKS)


def use_version(version):
    """Make TASKS the registry of HELMET at `version` (the runner calls it once, before anything reads TASKS)."""
    TASKS.clear()
    TASKS.update(_BASE)
    for name, change in VERSIONS[version].items():
        TASKS[name] = change if isinstance(change, Task) else dataclasses.replace(_BASE[name], **change)


# A third table: RULER's own average of its 13 tasks, each scored RULER's way (tasks/ruler.py), as the paper's
# Table 27 reports it at 128K
RULER_CATEGORIES = {"RULER": RULER}


def category_averages(scores, categories=CATEGORIES):
    """Category means over the tasks that ran: {category: {length: {score, tasks used, complete}}}."""
    out = {}
    for cat, members in categories.items():
        for length in sorted({L for t in members for L in scores.get(t, {})}):
            have = [t for t in members if length in scores.get(t, {})]
            out.setdefault(cat, {})[length] = {"score": float(np.mean([scores[t][length] for t in have])),
                                              "tasks": have, "complete": len(have) == len(members)}
    return out


def check_helmet_data(data_dir, tasks, lengths):
    """--helmet-data must be HELMET's data/ folder and hold a file for some of `tasks` (those read from that folder)
    and lengths (None: not known yet, check the folders only): otherwise the run would end with no task and no
    error."""
    tasks = [t for t in tasks if TASKS[t].files is not None]
    expected = "HELMET's data/ folder (json_kv/, ruler/, kilt/, msmarco/ with HELMET's .jsonl files)"
    if not data_dir or not tasks:
        return
    if not os.path.isdir(data_dir):
        raise UserError(f"--helmet-data {data_dir}: no such directory; expected {expected}")
    if not any(os.path.isdir(os.path.join(data_dir, d)) for d in ("json_kv", "ruler", "kilt", "msmarco")):
        raise UserError(f"--helmet-data {data_dir} has none of json_kv/, ruler/, kilt/, msmarco/; expected "
                        f"{expected}")
    wanted = [f[0] for t in tasks for L in lengths or [] if (f := TASKS[t].files(L, data_dir))]
    if lengths and not any(map(os.path.exists, wanted)):
        files = ", ".join(os.path.relpath(f, data_dir) for f in wanted[:4])
        raise UserError(f"--helmet-data {data_dir} has no file for {','.join(tasks)} at lengths "
                        f"{','.join(map(str, lengths))}" + (f"; expected {files}" if files else
                                                            " (HELMET's files are for 4096 to 131072 tokens)"))
