# ProLong's recipe on Qwen2.5-7B-Instruct, stage 2: from the 64K checkpoint (weights and optimizer state; the LR
# schedule restarts) to 512K-token sequences, everything as configs/prolong_512k.py (mixture and its length
# curriculum, 2,500 steps x 8M tokens) except the model, its tokenizer and data, the RoPE base and the SP size.
#
# RoPE base, by the paper's rule: dynamic NTK for Qwen2.5's 32,768 pre-training tokens (base 1e6) -> 512K
# (s = 16, head_dim 128) gives 1e6 * 16^(128/126) = 1.67e7; ProLong's 512K base for Llama-3 was 1.28e8 against an
# NTK value of 3.4e7, about 3.7 times; the same factor here gives 6.4e7 (16 x the 64K stage's 4e6, as 1.28e8 was
# 16 x 8e6).
#
# Sequence parallelism: Ulysses gives each rank num_attention_heads / sp_size heads, and Qwen2.5-7B's 28 heads
# (4 KV heads) split over 4 (or 28), not 8: sp_size 4, so each GPU holds 128K tokens of a sequence, twice the
# recipe's 64K. memory.py's estimate from a meta-device step (`python bench.py memory`, init_from a directory with
# Qwen2.5-7B's config.json): 70.0 GiB peak per GPU on 64 GPUs, 82.4 GiB on 8 (more than an 80 GB GPU holds: 16 or
# more of them, or 141 GB H200s), plus the CUDA context and NCCL.
#   torchrun --nnodes 8 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py \
#       configs/qwen2_5_7b_512k.py

include("prolong_512k.py")
out_dir = "runs/qwen2.5-7b-512k"
init_from = "runs/qwen2.5-7b-64k/step_0005000"
rope_theta = 6.4e7
sp_size = 4
data_root = "data/qwen2.5-512K"
