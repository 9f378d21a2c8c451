# Ablation, RoPE base at 64K (paper Table 18): 5e5, Llama-3's original base, kept; the base arm has 8e6.
# Hardware: as base_64k.py (8 GPUs with 80 GB or more, ~45 hours estimated, not measured).
#   torchrun --nproc_per_node 8 train.py configs/ablations/rope_64k_500k.py

include("base_64k.py")  # the shared base
out_dir = "runs/ablations/rope_64k_500k"
rope_theta = 5e5
