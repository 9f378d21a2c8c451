"""tasks/rouge.py: ROUGE-L / ROUGE-Lsum against rouge_score 0.1.2 itself, and the Porter stemmer against NLTK's
(the test-only references; tasks/rouge.py depends on neither)."""
import importlib
import inspect
import os
import random
import re
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tasks import rouge as rm  # noqa: E402



def stdlib_docstrings():
    """Real English with inflections, punctuation, numbers and multi-line paragraphs: this Python's docstrings."""
    docs = []
    for name in ["collections", "itertools", "functools", "json", "re", "textwrap", "string", "os", "shutil",
                 "subprocess", "argparse", "logging", "email.message", "http.client", "unittest", "pathlib",
                 "datetime", "decimal", "fractions", "inspect", "threading", "tarfile", "zipfile", "csv"]:
        for _, obj in sorted(vars(importlib.import_module(name)).items()):
            doc = inspect.getdoc(obj) if inspect.isfunction(obj) or inspect.isclass(obj) else None
            if doc and len(doc) > 40:
                docs.append(doc[:1200])
    return docs


# words the Porter rules treat specially (NLTK's irregular forms, each step's suffixes, y, double consonants)
TRICKY = """skies sky dying lying tying news innings outings cannings howe proceed exceed succeed caresses ponies ties
cats feed agreed plastered bled motoring sing conflated troubled sized hopping tanned falling hissing fizzed failing
filing happy enjoy spied tried flies cried relational conditional rational valenci hesitanci digitizer conformabli
radicalli differentli vileli analogousli vietnamization predication operator feudalism decisiveness hopefulness
callousness formaliti sensitiviti sensibiliti triplicate formative formalize electriciti electrical hopeful goodness
revival allowance inference airliner gyroscopic adjustable defensible irritant replacement adjustment dependent
adoption homologou communism activate angulariti homologous effective bowdlerize probate rate cease controll roll
generalizations oscillators archaeology analogies apologies fully carefully yyyy syzygy toying obeying saying
played 1990s 3rds mp3s abc123s""".split()


def test_porter_stem_matches_nltk():
    porter = pytest.importorskip("nltk.stem.porter")
    nltk_stem = porter.PorterStemmer().stem  # the mode rouge_score uses (the default, NLTK_EXTENSIONS)
    stdlib = sysconfig.get_paths()["stdlib"]
    text = " ".join(open(os.path.join(stdlib, f), encoding="utf-8", errors="replace").read()
                    for f in sorted(os.listdir(stdlib)) if f.endswith(".py"))
    words = sorted({w for w in re.sub(r"[^a-z0-9]+", " ", text.lower()).split() if len(w) > 3} | set(TRICKY))
    assert len(words) > 10000
    wrong = [(w, rm.porter_stem(w), nltk_stem(w)) for w in words if rm.porter_stem(w) != nltk_stem(w)]
    assert not wrong, wrong[:20]


def rouge_reference(prediction, answers):
    """HELMET's utils.calculate_metrics (utils.py:164-186 at 4526dfb), the ROUGE part, on rouge_score itself."""
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rougeL", "rougeLsum"], use_stemmer=True)
    if isinstance(answers, str):
        answers = [answers]
    elif isinstance(answers[0], list):
        answers = [a for group in answers for a in group]
    rouges = [scorer.score(target=a, prediction=prediction) for a in answers]
    out = {}
    for k in scorer.rouge_types:
        out[k + "_f1"] = max(r[k].fmeasure for r in rouges)
        out[k + "_recall"] = max(r[k].recall for r in rouges)
    return out


EDGE_PAIRS = [
    ("", "The quick brown fox."), ("The quick brown fox.", ""), ("", ""), ("   \n\n  ", "a b c"), ("!!! ... ???", "?!"),
    ("The cats were running quickly; the dog ran.", "A cat runs quick, and dogs running."),
    ("In 1999, 3.14 apples cost $2,500 (approx.).", "Apples cost 2500 dollars in 1999: 3 14."),
    ("Café naïve façade: Über-Straße, İstanbul, Kelvin \u212a.", "cafe naive facade uber strasse istanbul k"),
    ("line one\nline two\n\nline three", "line three\nline one two"),
    ("Generalizations about oscillators.\nThe archaeologists' analogies!", "generalization oscillator archaeology"),
    ("The the the the the.", "the"), ("a\nb\nc\nd", "d\nc\nb\na"),
    ("Skies, dying, lying, tying; the innings' news.", "sky die lie tie inning news"),
    ("Enjoying the toys, she was saying: happy days, syzygy, flying.", "enjoy toy say happi day syzygi fli"),
    ("The adaptations were additions; conditional relations.", "adapt addit condition relat"),
    ("Summary: The plaintiffs sued.\nThe court agreed.\nThe case settled in 2017.",
     ["The court agreed with the plaintiffs.\nIt settled.", "Plaintiffs sued in 2015.\nSettled 2017."]),
    ("Walton is headed to the North Pole.", [["The North Pole", "north pole"], ["To the North Pole."]]),
]


def test_rouge_matches_rouge_score():
    pytest.importorskip("rouge_score")
    docs, rng = stdlib_docstrings(), random.Random(0)
    pairs = list(EDGE_PAIRS)
    endings = ["s", "es", "ed", "ing", "ion", "ions", "ly", "ness", "al", "ize", "ful", "ity", "", "", ""]

    def reinflect(w):  # another form of the word (or a stem of it), so that matches depend on the stemmer
        return w.rstrip("aeiou")[:len(w) - rng.randrange(4)] + rng.choice(endings) if w.isalpha() else w

    for i in range(150):  # predictions: a document with words dropped or re-inflected, on lines or not; 1-3 answers
        doc = docs[rng.randrange(len(docs))]
        pred = " ".join(reinflect(w) if rng.random() < 0.3 else w for w in doc.split(" ") if rng.random() > 0.2)
        pred = pred.replace(". ", ".\n") if i % 2 else pred.replace("\n", " ")
        answers = [doc] + [docs[rng.randrange(len(docs))] for _ in range(rng.randrange(3))]
        pairs.append((pred, answers if i % 3 else answers[0]))
    for pred, answers in pairs:
        mine, ref = rm.rouge(pred, answers), rouge_reference(pred, answers)
        assert list(mine) == list(ref)
        for k in ref:
            assert abs(mine[k] - ref[k]) <= 1e-12, (k, mine[k], ref[k], pred[:80])


def test_rouge_max_over_answers_takes_each_metric_separately():
    out = rm.rouge("a b c d", ["a b c d x", "a"])  # F1 from the first answer (8/9), recall from the second (1)
    assert out["rougeL_f1"] == pytest.approx(8 / 9) and out["rougeL_recall"] == 1.0
    assert out["rougeLsum_f1"] == pytest.approx(8 / 9) and out["rougeLsum_recall"] == 1.0


