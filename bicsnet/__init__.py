"""BiCSNet: a bidirectional cross-scale backbone for recognition and localization.

Public entry points::

    import bicsnet
    bicsnet.list_models("*48*")
    model = bicsnet.create_model("bicsnet_48", task="detection", num_classes=80)
    bicsnet.default_input_size("bicsnet_48")  # 640, Table I
    result = bicsnet.train("run.yaml")                  # or a RunConfig / dict
    metrics = bicsnet.evaluate(result.weights)
    preds = bicsnet.predict(result.weights, ["photo.jpg"], out="preds")
"""
from .api import RunResult, evaluate, predict, train
from .arch.backbone import BiCSNet, BiCSNetConfig
from .config import ModelConfig, RunConfig
from .data.spec import DataSpec
from .errors import BicsnetError, CheckpointError, ConfigError, DataError
from .models import create_model, create_model_from_config, default_input_size, get_entry, list_models
from .tasks import TASKS, get_task

__version__ = "0.1.0"

__all__ = [
    "BiCSNet",
    "BiCSNetConfig",
    "BicsnetError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataSpec",
    "ModelConfig",
    "RunConfig",
    "RunResult",
    "TASKS",
    "create_model",
    "create_model_from_config",
    "default_input_size",
    "get_entry",
    "get_task",
    "list_models",
    "evaluate",
    "predict",
    "train",
    "__version__",
]
