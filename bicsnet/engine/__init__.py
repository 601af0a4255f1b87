"""Training engine: one trainer for every task, checkpoints, schedules, distributed helpers.

What a command-line front end needs:

* train: ``Trainer(model, task, train_set, val_set, TrainConfig(...), collate_fn, meta, resume=...).fit()``
* evaluate: ``evaluate_model(model, task, dataset, batch_size, collate_fn)`` then
  ``write_eval_outputs(out_dir, result)`` on the main process
* weights: ``load_model(path) -> (state_dict, meta)``, ``load_state_into(model, state_dict)``,
  ``save_model(path, model, meta)``; weights of any origin (``.pth``, prefixes, a backbone
  alone): :mod:`bicsnet.weights`
"""
from .checkpoint import (
    CheckpointSet,
    LoadReport,
    RunCheckpointer,
    load_model,
    load_state_into,
    load_training_state,
    read_model_meta,
    save_model,
    save_training_state,
)
from .distributed import get_rank, get_world_size, init_distributed, is_main_process, shutdown_distributed
from . import hooks
from .hooks import *  # noqa: F403  (its __all__, re-exported below)
from .schedule import build_scheduler, lr_factor
from .adapters import ClassificationTask, DetectionTask, EvalResult, SegmentationTask, Task
from .trainer import TrainConfig, Trainer, evaluate_model, write_eval_outputs

__all__ = [
    "CheckpointSet", "LoadReport", "RunCheckpointer", "load_model", "load_state_into",
    "load_training_state", "read_model_meta", "save_model", "save_training_state",
    "get_rank", "get_world_size", "init_distributed", "is_main_process", "shutdown_distributed",
    "build_scheduler", "lr_factor",
    "ClassificationTask", "DetectionTask", "EvalResult", "SegmentationTask", "Task",
    "TrainConfig", "Trainer", "evaluate_model", "write_eval_outputs",
]  # fmt: skip
__all__ += hooks.__all__
