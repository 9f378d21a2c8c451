# Ablation, RoPE base at 64K (paper Table 18): 4e6; the base arm has 8e6.
# Hardware: as base_64k.py (8 GPUs with 80 GB or more, ~45 hours estimated, not measured).
#   torchrun --nproc_per_node 8 train.py configs/ablations/rope_64k_4m.py

include("base_64k.py")  # the shared base
out_dir = "runs/ablations/rope_64k_4m"
rope_theta = 4e6
