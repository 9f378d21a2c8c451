# The data mixture of the ablations at 64K (paper appendix B.4 and Table 5), included by base_64k.py and
# base_512k.py. Not a run: a file whose name starts with _ is a piece that configs include.
_long, _short = 0.6, 0.4  # arms that change the long share rescale these, keeping the proportions within each
_books_repos = (0.5, 0.5)
# Table 5, as shares of the short data (0.10 / 0.04 of all tokens)
_shortmix = {"fineweb-edu": 0.25, "fineweb-2023-50": 0.25, "dolmawiki": 0.1, "tuluv2": 0.1,
             "stackexchange": 0.1, "arxiv": 0.1, "openwebmath": 0.1}


def _mixture(long, short, books_repos, shortmix):
    out = [dict(path=p, proportion=long * x, length=65536, mode="chunk")
           for p, x in zip(("book-65536", "thestackv1_concat_by_repo-65536"), books_repos) if x]
    return out + [dict(path=p, proportion=short * x, length=65536, mode="pack")
                  for p, x in shortmix.items() if x]
