# ProLong stage 3: supervised fine-tuning of the 512K base on UltraChat, loss on assistant tokens only (paper:
# 250 steps x 4M tokens, about 1B tokens, i.e. several passes over the data: repetition is expected and
# allowed). Conversations are packed into 64K sequences, each its own document; one that does not fit is
# truncated and the rest dropped. Weights only from the base (a fresh optimizer), RoPE base as the checkpoint
# has it, no SP.
#
# Hardware: as in the paper, 8 GPUs with 80 GB (H100/A100-80GB) or more, bf16; any GPU count that divides the
# 64 sequences of a step. Memory per GPU on 8 GPUs as in stage 1 (~16 GB of sharded weights, gradients and
# Adam state plus 64K activation checkpoints). Time, estimated from throughput.step_flops (not measured): ~1.9e17
# FLOP per step (conversations are short, so attention is ~3% of it), ~1 minute a step on 8 H100s at 40% MFU,
# ~4 hours in all.
#   python sft.py prepare data/ultrachat HuggingFaceH4/ultrachat_200k   # train_sft split, Llama-3 chat format
#   torchrun --nproc_per_node 8 sft.py configs/sft_ultrachat.py
# or the paper's already tokenised data (princeton-nlp/prolong-ultrachat-64K, MDS with a mask column):
#   python data.py import-mds SRC data/ultrachat

out_dir = "runs/prolong-sft"
init_from = "runs/prolong-512k/step_0002500"  # or the released "princeton-nlp/Llama-3-8B-ProLong-512k-Base"
# rope_theta: not set, the checkpoint's (1.28e8) stays

data_root = "data"
seq_len = 65536
mixture = [dict(path="ultrachat", proportion=1.0, length=65536, mode="sft")]
allow_repeat = True  # ~1B tokens is several passes over UltraChat's train_sft split

tokens_per_step = 64 * 65536  # 4M tokens: 64 sequences
max_steps = 250
lr = 2e-5
min_lr = 2e-6
warmup_fraction = 0.05
checkpoint_interval = 50
keep_checkpoints = 3

# The rest of the optimiser and precision: settings.DEFAULTS (weight decay 0.1, betas 0.9/0.95, clipping 1.0,
# bf16 compute over fp32 master weights, activation checkpointing, one sequence per micro-batch, no sequence
# parallelism), as in the paper.
