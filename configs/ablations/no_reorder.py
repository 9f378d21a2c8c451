# Ablation, minibatch reordering (paper Table 15, throughput only; the paper reports +11.7% tokens/s at 64K on
# 8 GPUs with reordering): each rank runs its micro-batches in data order instead of by descending sum of
# squared document lengths. Compare train.py's logged tokens/s with the base arm's; a few steps suffice
# (--max_steps=20 on both; the loss is the same either way). Hardware: as base_64k.py (8 GPUs with 80 GB or
# more, ~45 hours estimated, not measured).
#   torchrun --nproc_per_node 8 train.py configs/ablations/no_reorder.py

include("base_64k.py")  # the shared base
out_dir = "runs/ablations/no_reorder"
sort_microbatches = False
