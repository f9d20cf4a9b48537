"""Episodic in-context training and fine-tuning (``fx.training``): tasks, synthetic data,
augmentation, self-supervised CT labels (:mod:`~fewshotcx.training.selfsupervised`), the run's
settings (:mod:`~fewshotcx.training.config`), the training loop (:mod:`~fewshotcx.training.loop`)
and what a run writes (:mod:`~fewshotcx.training.checkpoints`)."""

from .checkpoints import export_checkpoint
from .config import TrainConfig
from .loop import episode_loss, evaluate_episodes, finetune, train

__all__ = ["TrainConfig", "episode_loss", "evaluate_episodes", "export_checkpoint", "finetune", "train"]
