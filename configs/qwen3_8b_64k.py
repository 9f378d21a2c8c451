# ProLong's recipe on Qwen3-8B (the post-trained model, as ProLong started from an Instruct model), stage 1:
# continue training on 64K-token sequences, everything as configs/prolong_64k.py (mixture, 5,000 steps x 4M
# tokens, optimiser, schedule) except the model, its tokenizer, the data (tokenised with it) and the RoPE base.
#
# RoPE base, by the paper's rule (a base well above what dynamic NTK suggests for the target length): Qwen3 was
# pre-trained at 32,768 tokens with base 1e6 (Qwen3 report: ABF from 1e4 to 1e6 in its long-context stage; its 128K
# is YaRN at inference). Dynamic NTK for 32K -> 64K (s = 2, head_dim 128): 1e6 * 2^(128/126) = 2.0e6; ProLong's
# 8e6 for Llama-3 was about twice its NTK value (4.1e6), so 4e6 here.
#
# Hardware and time: as configs/prolong_64k.py (8.2B parameters, 36 layers of hidden 4096, 32 heads and 8 KV heads
# of head_dim 128, q/k norms). Memory per GPU on 8 GPUs, memory.py's estimate from a meta-device step (`python
# bench.py memory`, init_from a directory with Qwen3-8B's config.json): 55.2 GiB peak.
#   python data.py tokenize data/qwen3-64K/NAME ... --tokenizer Qwen/Qwen3-8B   # per domain
#   torchrun --nproc_per_node 8 train.py configs/qwen3_8b_64k.py
# The released prolong-data-64K holds Llama-3 token ids: tokenise the domains' text again with Qwen's tokenizer.
# Qwen3's chat template adds thinking blocks; SFT data without them (UltraChat) is written as plain ChatML.

include("prolong_64k.py")
out_dir = "runs/qwen3-8b-64k"
init_from = "Qwen/Qwen3-8B"
tokenizer = "Qwen/Qwen3-8B"  # its tokenizer.json (what train.py takes from init_from anyway)
rope_theta = 4e6
data_root = "data/qwen3-64K"
