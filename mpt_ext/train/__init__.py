"""The trainer: `mpt-train` (also `python -m mpt_ext.train`).

    from mpt_ext.train import TrainConfig, Trainer
    trainer = Trainer(TrainConfig(max_steps=100))
    trainer.train(); trainer.finish(); print(trainer.sample())
"""
from .config import TrainConfig

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged"]


def __getattr__(name):
    # the trainer pulls in the model and torch.distributed: import it on first use
    if name in ("Trainer", "TrainingDiverged"):
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(name)
