# ProLong's recipe on Qwen3-8B, stage 2: from the 64K checkpoint (weights and optimizer state; the LR schedule
# restarts) to 512K-token sequences with 8-way Ulysses sequence parallelism, everything as configs/prolong_512k.py
# (mixture and its length curriculum, 2,500 steps x 8M tokens) except the model, its tokenizer and data, and the
# RoPE base.
#
# RoPE base, by the paper's rule: dynamic NTK for Qwen3's 32,768 pre-training tokens (base 1e6) -> 512K (s = 16,
# head_dim 128) gives 1.67e7; ProLong's 1.28e8 for Llama-3 was about 3.7 times its NTK value (3.4e7), so 6.4e7
# here (16 x the 64K stage's 4e6, as 1.28e8 was 16 x 8e6). Qwen3-8B's 32 heads and 8 KV heads split over sp 8.
# Memory per GPU on 64 GPUs, memory.py's estimate from a meta-device step (`python bench.py memory`): 42.3 GiB peak.
#   torchrun --nnodes 8 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py \
#       configs/qwen3_8b_512k.py

include("prolong_512k.py")
out_dir = "runs/qwen3-8b-512k"
init_from = "runs/qwen3-8b-64k/step_0005000"
rope_theta = 6.4e7
data_root = "data/qwen3-512K"
