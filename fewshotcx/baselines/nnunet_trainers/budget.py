"""Short-budget nnU-Net trainers, found by nnU-Net by class name (``nnUNet_extTrainer`` points here).

``nnUNetTrainerFx_<E>ep_<I>it`` is the stock :class:`nnUNetTrainer` (same planning, network, loss,
augmentation, optimiser and poly learning-rate schedule) with only the budget changed: ``E`` epochs of
``I`` training iterations each (stock: 1000 × 250) and ``max(1, I // 5)`` validation iterations per
epoch (stock: 50). The final sliding-window validation on the training fold is skipped: with
``fold="all"`` it would only re-predict the training cases.

nnU-Net instantiates trainers by name, so the classes are made on request by the module-level
``__getattr__`` below; the name in ``nnUNet_results`` and in the checkpoint records the budget.
"""

from __future__ import annotations

import re

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

PREFIX = "nnUNetTrainerFx"
_NAME = re.compile(rf"^{PREFIX}_(\d+)ep_(\d+)it$")


def trainer_name(epochs: int, iterations: int) -> str:
    """The class name nnU-Net is given for a budget of ``epochs`` × ``iterations``."""
    return f"{PREFIX}_{int(epochs)}ep_{int(iterations)}it"


def _make(epochs: int, iterations: int) -> type:
    class BudgetTrainer(nnUNetTrainer):
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = max(1, iterations // 5)

        def perform_actual_validation(self, save_probabilities: bool = False) -> None:
            self.print_to_log_file("fewshotcx budget trainer: final validation skipped")

    BudgetTrainer.__name__ = BudgetTrainer.__qualname__ = trainer_name(epochs, iterations)
    return BudgetTrainer


def __getattr__(name: str) -> type:
    match = _NAME.match(name)
    if match is None or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise AttributeError(name)
    cls = _make(int(match.group(1)), int(match.group(2)))
    globals()[name] = cls
    return cls
