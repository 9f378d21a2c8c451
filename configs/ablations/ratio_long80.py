# Ablation, long:short ratio (paper Figure 3): 80% long data (books:repos 1:1), 20% ShortMix; the base is the
# 60% point (the recipe's choice).
# Hardware: as base_64k.py (8 GPUs with 80 GB or more, ~45 hours estimated, not measured).
#   torchrun --nproc_per_node 8 train.py configs/ablations/ratio_long80.py

include("base_64k.py")  # the shared base
out_dir = "runs/ablations/ratio_long80"
mixture = _mixture(0.8, 0.2, _books_repos, _shortmix)
