"""Run by tests/test_fsdp.py under `torchrun --nproc_per_node 2`: FSDP2 (`fully_shard`) on CPU over gloo.

accelerate does not run FSDP on a CPU (configs/accelerate/README.md has its behaviour), so this worker
shards a LoRA tiny Llama with torch's own `fully_shard` and exercises icft's checkpoint functions the way
the recipe calls them under FSDP: gather the trainable weights and the optimizer state, save, restore.

    python tests/fsdp_worker.py MODE MODEL_DIR OUT_DIR   (MODE: straight | first | resume)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from icft.checkpoint import is_sharded, load_trainable, optimizer_state, trainable_state

STEPS, STOP = 6, 3


def main() -> None:
    mode, model_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert is_sharded(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    start = 0
    if mode == "resume":
        saved = torch.load(out / "checkpoint.pt", weights_only=False) if rank == 0 else {"weights": {}, "optim": {}}
        load_trainable(model, optimizer, saved["weights"], saved["optim"])
        start = STOP
    for step in range(start, STEPS):
        ids = torch.randint(5, 200, (2, 16), generator=torch.Generator().manual_seed(1000 * step + rank))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if mode == "first" and step + 1 == STOP:
            weights, optim = trainable_state(model), optimizer_state(model, optimizer)  # collective: every rank
            if rank == 0:
                torch.save({"weights": weights, "optim": optim}, out / "checkpoint.pt")
            break
    weights = trainable_state(model)
    if rank == 0 and mode != "first":
        torch.save(weights, out / "adapter.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
