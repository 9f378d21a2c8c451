# ProLong's recipe on Qwen2.5-7B-Instruct, stage 1: continue training on 64K-token sequences, everything as
# configs/prolong_64k.py (mixture, 5,000 steps x 4M tokens, optimiser, schedule) except the model, its tokenizer,
# the data (tokenised with that tokenizer) and the RoPE base.
#
# RoPE base, by the paper's rule (a base well above what dynamic NTK suggests for the target length): Qwen2.5 was
# pre-trained at 32,768 tokens with base 1e6 (Qwen2.5 report: ABF from 1e4 to 1e6 for the 32K stage; its 128K comes
# from YaRN at inference, which this recipe does not use). Dynamic NTK for 32K -> 64K (s = 2, head_dim 128):
# 1e6 * 2^(128/126) = 2.0e6. ProLong's own choice for Llama-3 (8K, 5e5 -> 64K) was 8e6 against an NTK value of
# 4.1e6, about twice; the same factor here gives 4e6.
#
# Hardware and time: as configs/prolong_64k.py (7.6B parameters against 8.0B: 28 layers of hidden 3584 against
# 32 of 4096, a 152K vocabulary against 128K). Memory per GPU on 8 GPUs, memory.py's estimate from a meta-device
# step (`python bench.py memory`, init_from a directory with Qwen2.5-7B's config.json): 50.5 GiB peak.
#   python data.py tokenize data/qwen2.5-64K/NAME ... --tokenizer Qwen/Qwen2.5-7B-Instruct   # per domain
#   torchrun --nproc_per_node 8 train.py configs/qwen2_5_7b_64k.py
# The paper's released data (princeton-nlp/prolong-data-64K) holds Llama-3 token ids: the domains must be
# tokenised again from their text with Qwen's tokenizer (train.py refuses a domain tokenised with another one).
# Then SFT: `python sft.py prepare data/qwen2.5-ultrachat HuggingFaceH4/ultrachat_200k --tokenizer <checkpoint>`
# (ChatML) and configs/sft_ultrachat.py with --init_from, --tokenizer and the mixture's path set to it.

include("prolong_64k.py")
out_dir = "runs/qwen2.5-7b-64k"
init_from = "Qwen/Qwen2.5-7B-Instruct"
tokenizer = "Qwen/Qwen2.5-7B-Instruct"  # its tokenizer.json (what train.py takes from init_from anyway)
rope_theta = 4e6
data_root = "data/qwen2.5-64K"
