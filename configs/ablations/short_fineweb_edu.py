# Ablation, short data (paper Table 6): the 40% short share is FineWeb-Edu only instead of ShortMix (the
# base). Needs 2B tokens of FineWeb-Edu in data/prolong-64K/fineweb-edu (the run refuses to start if there are
# fewer). Hardware: as base_64k.py (8 GPUs with 80 GB or more, ~45 hours estimated, not measured).
#   torchrun --nproc_per_node 8 train.py configs/ablations/short_fineweb_edu.py

include("base_64k.py")  # the shared base
out_dir = "runs/ablations/short_fineweb_edu"
mixture = _mixture(_long, _short, _books_repos, {"fineweb-edu": 1.0})
