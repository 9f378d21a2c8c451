# Ablation, short data (paper Table 6): the 40% short share is DCLM-Baseline only instead of ShortMix (the
# base). DCLM-Baseline is not in the paper's data release: tokenise it yourself into
# data/prolong-64K/dclm-baseline (python data.py tokenize data/prolong-64K/dclm-baseline FILES.jsonl), about
# 2B tokens. Hardware: as base_64k.py (8 GPUs with 80 GB or more, ~45 hours estimated, not measured).
#   torchrun --nproc_per_node 8 train.py configs/ablations/short_dclm.py

include("base_64k.py")  # the shared base
out_dir = "runs/ablations/short_dclm"
mixture = _mixture(_long, _short, _books_repos, {"dclm-baseline": 1.0})
