# ProLong SFT with synthetic long-instruction data (paper section 5, Table 8): UltraChat mixed with 1% (by
# tokens) of the synthetic QA / RAG / recursive-summary records that `sft.py synth` writes (40/30/30 by record
# count). The paper finds short UltraChat alone best; this config re-runs its comparison at 1% synthetic.
# Everything else (init, 250 steps x 4M tokens, LR 2e-5 -> 2e-6, 64K packs, loss on assistant tokens only) is
# configs/sft_ultrachat.py, included below; only the mixture and out_dir change. Hardware: as sft_ultrachat.py
# (8 x 80 GB GPUs, ~4 hours). Build the data first (synthetic records need a long-context model and long
# documents; generation is the slow part):
#   python sft.py synth data/synthetic.jsonl --ckpt runs/prolong-512k/step_0002500 --domain data/books \
#       --n 20000
#   python sft.py prepare data/synthetic data/synthetic.jsonl  # first drop unparsed QA (.parsed false)
#   python sft.py prepare data/ultrachat HuggingFaceH4/ultrachat_200k
#   torchrun --nproc_per_node 8 sft.py configs/sft_synthetic_1.py
include("sft_ultrachat.py")

out_dir = "runs/prolong-sft-synthetic-1"
mixture = [dict(path="ultrachat", proportion=0.99, length=65536, mode="sft"),
           dict(path="synthetic", proportion=0.01, length=65536, mode="sft")]
