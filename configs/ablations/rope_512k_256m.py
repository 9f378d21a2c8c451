# Ablation, RoPE base at 512K (paper Table 19): 2.56e8; base_512k.py is the 1.28e8 arm.
# Hardware: as base_512k.py (a multiple of 8 GPUs with 80 GB or more; ~9 hours on 64 GPUs, estimated).
#   torchrun --nnodes 8 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py \
#       configs/ablations/rope_512k_256m.py

include("base_512k.py")  # the shared 512K base
out_dir = "runs/ablations/rope_512k_256m"
rope_theta = 2.56e8
