# CPU demo, stage 1 (`make demo` runs it): a small Llama-3-shaped model with the real 128,256-token
# vocabulary, trained from scratch at 2K tokens on the offline demo corpus (`python data.py demo demo_data`).
# Hardware: any CPU; about N minutes on 2 cores. Stage 2 (demo_8k.py) continues at 8K with a raised RoPE base,
# like ProLong's 64K -> 512K.
out_dir = "runs/demo-2k"
model = "tiny"
# hidden 64, 2 layers, 4 heads, 2 KV heads: at this size the 128,256-way output layer is most of the work

data_root = "demo_data"
seq_len = 2048
mixture = [
    dict(path="code", proportion=0.4, length=2048, mode="chunk"),  # stdlib packages, one repository each
    dict(path="books", proportion=0.4, length=2048, mode="chunk"),  # Shakespeare and Milton
    dict(path="docs", proportion=0.2, length=2048, mode="pack"),  # short reference texts, packed
]
val_mixture = [dict(path="heldout", proportion=1.0, length=2048, mode="pack")]  # never trained on
val_sequences = 4

tokens_per_step = 2048
max_steps = 60
lr = 1e-2
min_lr = 1e-3
compute_dtype = "float32"  # CPU runs compute in fp32: bf16 matmuls are ~9x slower without AVX-512-BF16 or AMX
activation_checkpointing = False  # memory is plentiful at this size; recomputation would cost a third more
eval_interval = 20
checkpoint_interval = 30
