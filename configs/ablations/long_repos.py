# Ablation, long-data source (paper Table 4): long data from code repositories only (all of the 60% long
# share); the base is the 1:1 books:repos arm.
# Hardware: as base_64k.py (8 GPUs with 80 GB or more, ~45 hours estimated, not measured).
#   torchrun --nproc_per_node 8 train.py configs/ablations/long_repos.py

include("base_64k.py")  # the shared base
out_dir = "runs/ablations/long_repos"
mixture = _mixture(_long, _short, (0.0, 1.0), _shortmix)
