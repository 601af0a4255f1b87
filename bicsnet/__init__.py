"""BiCSNet: a bidirectional cross-scale backbone for recognition and localization.

Public entry points::

    import bicsnet
    bicsnet.list_models()
    model = bicsnet.create_model("bicsnet_48", task="detection", num_classes=80)
    bicsnet.default_input_size("bicsnet_48")  # 640, Table I
"""
from .arch.backbone import BiCSNet, BiCSNetConfig
from .errors import BicsnetError, CheckpointError, ConfigError, DataError
from .models import TASKS, create_model, create_model_from_config, default_input_size, get_entry, list_models

__version__ = "0.1.0"

__all__ = [
    "BiCSNet",
    "BiCSNetConfig",
    "BicsnetError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "TASKS",
    "create_model",
    "create_model_from_config",
    "default_input_size",
    "get_entry",
    "list_models",
    "__version__",
]
