"""Subprocess entry for the trainer tests (SIGTERM, torchrun): trains the MPT model of a
TrainConfig given as JSON and writes the loss history as JSON (rank 0).

    python tests/train_worker.py CONFIG_JSON OUT_JSON [STOP_AT_STEP]

With STOP_AT_STEP it trains to that step and saves a checkpoint there (an interrupted run).
"""
import json
import sys

import torch

from mpt_ext.train import TrainConfig, Trainer


def main():
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
    trainer = Trainer(cfg)
    stop_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
    hist = trainer.train(until_step=stop_at)
    if stop_at:
        trainer.save()
    model_sd = trainer._full_state()[0]   # collective under FSDP: every rank calls it
    if trainer.dist.is_main:
        with open(sys.argv[2], "w") as f:
            json.dump({"history": hist, "stopped": trainer._stop_signal, "step": trainer.step,
                       "world_size": trainer.dist.world_size,
                       "params": {k: v.float().flatten().tolist() for k, v in model_sd.items()}}, f)
    trainer.close()


if __name__ == "__main__":
    main()
