# Ablation, RoPE base at 512K (paper Table 19), arm 1.28e8 (the recipe's value), and the shared base of the
# other 512K arms: from the 64K ablation model (base_64k.py's last checkpoint, weights and optimizer state,
# the LR schedule restarted), 5B tokens at 512K (640 steps x 8M tokens) with 8-way sequence parallelism. The
# mixture is the recipe's 512K length curriculum (configs/prolong_512k.py) without textbooks and with
# base_64k.py's ShortMix (40%): code repositories 15% at 512K + 15% at 64K, books 5% at 512K + 25% at 64K;
# this split is ours, taken from the recipe, not read from the paper's ablation.
#
# Hardware: a multiple of 8 GPUs with 80 GB or more (each 512K sequence spread over 8 GPUs); the data-parallel
# size (GPUs / 8) must divide the 16 sequences of a step. Time, scaled from configs/prolong_512k.py's estimate
# (not measured): ~8 minutes a step on 8 H100s at 40% MFU, ~3.5 days; ~9 hours on 64 GPUs.
#   torchrun --nnodes 8 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py \
#       configs/ablations/base_512k.py
# Data: princeton-nlp/prolong-data-512K imported per domain into data/prolong-512K (`python data.py
# import-mds`).

# The recipe's 512K stage (RoPE base 1.28e8, 8-way sequence parallelism, 512K sequences, 8M-token steps,
# optimiser) with base_64k.py's ShortMix in place of the recipe's; what follows is all that this base changes.
include("../prolong_512k.py")
include("_mixture.py")  # base_64k.py's ShortMix
_gpus = 8

out_dir = "runs/ablations/base_512k"
init_from = "runs/ablations/base_64k/step_0001280"
# the recipe's long data without textbooks, and base_64k.py's ShortMix
mixture = [c for c in mixture if c["mode"] == "chunk" and c["path"] != "textbooks"]
mixture += [dict(path=p, proportion=_short * x, length=65536, mode="pack") for p, x in _shortmix.items()]

max_steps = 640  # 5B tokens
checkpoint_interval = 160
keep_checkpoints = 2
