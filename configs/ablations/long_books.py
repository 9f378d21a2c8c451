# Ablation, long-data source (paper Table 4): long data from books only (all of the 60% long share); the base
# is the 1:1 books:repos arm. The paper also has a CommonCrawl arm, whose long documents are not in its
# release. Hardware: as base_64k.py (8 GPUs with 80 GB or more, ~45 hours estimated, not measured).
#   torchrun --nproc_per_node 8 train.py configs/ablations/long_books.py

include("base_64k.py")  # the shared base
out_dir = "runs/ablations/long_books"
mixture = _mixture(_long, _short, (1.0, 0.0), _shortmix)
