"""Launched by tests/test_train.py under torchrun: one step's loss and full gradients for a fixed global
batch.

usage: torchrun --nproc_per_node N tests/train_worker.py OUT.pt
Rank r of N takes sequences [r * 4/N, (r+1) * 4/N) of the same four-sequence global batch and accumulates over
them, exactly as train.py does, in float64 with FSDP2 and activation checkpointing.

Also `byte_tokenizer(DIR)`, for the tests whose train.py runs need a tokenizer but not Llama-3's 128,256 ids
(test_balance, test_checkpoint): with it the model's vocabulary can be 512, and a CPU run is seconds
cheaper."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import parallel  # noqa: E402
import settings  # noqa: E402
import train  # noqa: E402
from common import exit_process  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402

VOCAB = 1000


def global_batch():
    """Four sequences of 96 tokens with unequal documents and unequal numbers of valid labels."""
    g = torch.Generator().manual_seed(1234)
    sequences = []
    for doc_lengths, masked in (([96], 0), ([10, 50, 36], 30), ([1, 2, 93], 5), ([40, 40, 16], 60)):
        ids = torch.randint(0, VOCAB, (96,), generator=g)
        cu = torch.tensor([0] + torch.tensor(doc_lengths).cumsum(0).tolist(), dtype=torch.int32)
        labels = ids.roll(-1)
        labels[cu[1:].long() - 1] = -100  # the last token of each document predicts nothing
        labels[:masked] = -100  # e.g. a prompt: fewer valid labels on some ranks than on others
        sequences.append(data.Sequence(ids, labels, cu))
    return sequences


def config():
    return dict(settings.DEFAULTS, model="tiny", model_overrides={"vocab_size": VOCAB, "num_hidden_layers": 3},
                param_dtype="float64", compute_dtype="float64", activation_checkpointing=True, seed=7)


def byte_tokenizer(directory):
    """A Hugging Face tokenizer.json whose ids are the bytes of the text (no merges: 0-255 is byte 0-255, as
    GPT-2's byte-level alphabet spells them) and <|begin_of_text|>, <|end_of_text|>, <|eot_id|> at 256-258;
    load_tokenizer(directory) reads it. Returns directory."""
    import tokenizers
    # GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for chr(256 + n)
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    vocab = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = tokenizers.decoders.ByteLevel()
    hf.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    os.makedirs(directory, exist_ok=True)
    hf.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, f)
    return str(directory)


def main(out):
    rank, world, device = parallel.init_distributed()
    mesh = init_device_mesh("cpu", (world,))
    model = parallel.build_model(config(), mesh, device, log=lambda msg: None)
    per_rank = 4 // world
    mine = global_batch()[rank * per_rank:(rank + 1) * per_rank]
    loss = train.accumulate_gradients(model, train.micro_batches(mine, 1), device)
    grads = {name.replace("_checkpoint_wrapped_module.", ""): p.grad.full_tensor()
             for name, p in model.named_parameters()}
    if rank == 0:
        torch.save({"loss": loss, "grads": grads}, out)
    torch.distributed.barrier()  # every rank leaves together
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    exit_process(main, sys.argv[1])  # without the interpreter teardown that can abort a gloo rank
