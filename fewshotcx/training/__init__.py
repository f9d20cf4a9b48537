"""Episodic in-context training and fine-tuning (``fx.training``): tasks, synthetic data,
augmentation and the training loop. See :mod:`fewshotcx.training.loop`."""

from .loop import TrainConfig, episode_loss, evaluate_episodes, export_checkpoint, finetune, train

__all__ = ["TrainConfig", "episode_loss", "evaluate_episodes", "export_checkpoint", "finetune", "train"]
