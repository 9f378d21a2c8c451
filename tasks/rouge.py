"""
ROUGE-L and ROUGE-Lsum exactly as `rouge_score` 0.1.2 computes them with use_stemmer=True, which is how HELMET's
utils.calculate_metrics scores LongQA and Summ outputs (`RougeScorer(['rougeL', 'rougeLsum'], use_stemmer=True)`),
with no dependency beyond the standard library: rouge_score's tokenizer (lower-case, every run of characters outside
[a-z0-9] is a space, tokens longer than 3 characters stemmed) and NLTK's Porter stemmer in its default
NLTK_EXTENSIONS mode (which is what rouge_score instantiates), re-implemented here. tests/test_tasks_rouge.py checks
equality with both packages.

    rouge(prediction, answers) -> {"rougeL_f1", "rougeL_recall", "rougeLsum_f1", "rougeLsum_recall"}  (max over answers)
"""

import collections
import re

# NLTK_EXTENSIONS: words looked up before any rule runs
_IRREGULAR = {"skies": "sky", "sky": "sky", "dying": "die", "lying": "lie", "tying": "tie", "news": "news",
              "innings": "inning", "inning": "inning", "outings": "outing", "outing": "outing",
              "cannings": "canning", "canning": "canning", "howe": "howe", "proceed": "proceed",
              "exceed": "exceed", "succeed": "succeed"}


def _consonants(w):
    """Porter's consonant flags: not a vowel, and a 'y' only when it starts the word or follows a vowel."""
    flags = []
    for i, ch in enumerate(w):
        flags.append(ch not in "aeiou" and (ch != "y" or i == 0 or not flags[-1]))
    return flags


def _measure(stem):
    """m in [C](VC)^m[V]: the number of vowel-to-consonant transitions."""
    f = _consonants(stem)
    return sum(1 for a, b in zip(f, f[1:]) if not a and b)


def _has_vowel(stem):
    return not all(_consonants(stem))


def _ends_cvc(w):
    """*o: consonant-vowel-consonant, the last not w, x or y; NLTK also accepts a two-letter vowel-consonant word."""
    f = _consonants(w)
    return (len(w) >= 3 and f[-3] and not f[-2] and f[-1] and w[-1] not in "wxy") or (
        len(w) == 2 and not f[0] and f[1])


def _first_rule(word, rules, min_measure):
    """Porter's rule lists: the first suffix that matches decides; its stem must have measure > min_measure,
    otherwise the word stays as it is (a later, shorter suffix is not tried)."""
    for suffix, replacement in rules:
        if word.endswith(suffix):
            stem = word[:len(word) - len(suffix)]
            return stem + replacement if _measure(stem) > min_measure else word
    return word


_STEP2 = [("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
          ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"), ("ization", "ize"),
          ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"),
          ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"), ("fulli", "ful")]
_STEP3 = [("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""), ("ness", "")]
_STEP4 = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism", "ate",
          "iti", "ous", "ive", "ize"]


def _step2(w):
    if w.endswith("alli") and _measure(w[:-4]) > 0:  # NLTK: alli -> al, then step 2 again
        return _step2(w[:-4] + "al")
    if w.endswith("logi"):  # NLTK's odd condition: the measure of the word less "ogi" (the stem keeps its "l")
        return w[:-1] if _measure(w[:-3]) > 0 else w
    return _first_rule(w, _STEP2, 0)


def _step4(w):
    for suffix in _STEP4:
        if w.endswith(suffix):
            stem = w[:-len(suffix)]
            ok = _measure(stem) > 1 and (suffix != "ion" or stem[-1] in "st")
            return stem if ok else w
    return w


def porter_stem(w):
    """NLTK's PorterStemmer().stem (mode NLTK_EXTENSIONS) for a lower-case word."""
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) <= 2:
        return w
    # step 1a: plurals (NLTK: a four-letter "-ies" word keeps "ie")
    if w.endswith("ies") and len(w) == 4:
        w = w[:-1]
    elif w.endswith("sses") or w.endswith("ies"):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    # step 1b: -eed, -ed, -ing (NLTK: -ied is -ie for four letters, else -i)
    if w.endswith("ied"):
        w = w[:-3] + ("ie" if len(w) == 4 else "i")
    elif w.endswith("eed"):
        w = w[:-1] if _measure(w[:-3]) > 0 else w
    else:
        for suffix in ("ed", "ing"):
            stem = w[:-len(suffix)]
            if w.endswith(suffix) and _has_vowel(stem):
                if stem.endswith(("at", "bl", "iz")):
                    w = stem + "e"
                elif len(stem) >= 2 and stem[-1] == stem[-2] and _consonants(stem)[-1]:
                    w = stem if stem[-1] in "lsz" else stem[:-1]
                else:
                    w = stem + "e" if _measure(stem) == 1 and _ends_cvc(stem) else stem
                break
    # step 1c (NLTK): y -> i after a consonant that is not the whole stem
    if w.endswith("y") and len(w) > 2 and _consonants(w)[-2]:
        w = w[:-1] + "i"
    w = _step4(_first_rule(_step2(w), _STEP3, 0))
    # step 5: a final e, a final ll
    if w.endswith("e"):
        m = _measure(w[:-1])
        if m > 1 or (m == 1 and not _ends_cvc(w[:-1])):
            w = w[:-1]
    if w.endswith("ll") and _measure(w[:-1]) > 1:
        w = w[:-1]
    return w


def rouge_tokens(text):
    """rouge_score's tokenize(text, PorterStemmer()): str.lower (Unicode), non-[a-z0-9] runs to spaces, stems."""
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    return [porter_stem(w) if len(w) > 3 else w for w in words]


def _lcs_table(a, b):
    table = [[0] * (len(b) + 1)]
    for x in a:
        above, row = table[-1], [0]
        for j, y in enumerate(b):
            row.append(above[j] + 1 if x == y else max(above[j + 1], row[j]))
        table.append(row)
    return table


def _lcs_positions(ref, can):
    """Positions in `ref` of the LCS that rouge_score's backtrack reads out (its tie-break matters for the union)."""
    t, i, j, out = _lcs_table(ref, can), len(ref), len(can), []
    while i > 0 and j > 0:
        if ref[i - 1] == can[j - 1]:
            out.append(i - 1)
            i, j = i - 1, j - 1
        elif t[i][j - 1] > t[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return out


def _fmeasure(p, r):
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _rouge_l(target, prediction):
    """(recall, F1) of sentence-level LCS."""
    if not target or not prediction:
        return 0, 0
    lcs = _lcs_table(target, prediction)[-1][-1]
    p, r = lcs / len(prediction), lcs / len(target)
    return r, _fmeasure(p, r)


def _rouge_lsum(target, prediction):
    """(recall, F1) of summary-level LCS over newline-split sentences: the union LCS of each reference sentence
    against all predicted sentences, each token counted at most as often as it occurs on both sides."""
    ref = [rouge_tokens(s) for s in target.split("\n") if s]
    can = [rouge_tokens(s) for s in prediction.split("\n") if s]
    m, n = sum(map(len, ref)), sum(map(len, can))
    if not ref or not can or not m or not n:
        return 0, 0
    left_r = collections.Counter(t for s in ref for t in s)
    left_c = collections.Counter(t for s in can for t in s)
    hits = 0
    for r in ref:
        for i in sorted(set().union(*(_lcs_positions(r, c) for c in can))):
            if left_c[r[i]] > 0 and left_r[r[i]] > 0:
                hits += 1
                left_c[r[i]] -= 1
                left_r[r[i]] -= 1
    p, rec = hits / n, hits / m
    return rec, _fmeasure(p, rec)


def rouge(prediction, answers):
    """HELMET's ROUGE metrics: {rougeL_f1, rougeL_recall, rougeLsum_f1, rougeLsum_recall}, each the max over the
    answers (a str, a list, or a list of lists, flattened as HELMET does); F1 and recall may come from different
    answers."""
    if isinstance(answers, str):
        answers = [answers]
    elif isinstance(answers[0], list):
        answers = [a for group in answers for a in group]
    pred_tokens = rouge_tokens(prediction)
    scores = [(*_rouge_l(rouge_tokens(a), pred_tokens), *_rouge_lsum(a, prediction)) for a in answers]
    return {"rougeL_f1": max(s[1] for s in scores), "rougeL_recall": max(s[0] for s in scores),
            "rougeLsum_f1": max(s[3] for s in scores), "rougeLsum_recall": max(s[2] for s in scores)}


