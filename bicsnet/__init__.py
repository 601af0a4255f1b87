"""BiCSNet: a bidirectional cross-scale backbone for recognition and localization.

Public entry points::

    import bicsnet
    bicsnet.list_models("*48*")
    model = bicsnet.create_model("bicsnet_48", task="detection", num_classes=80)
    model = bicsnet.create_model("bicsnet_48", task="detection", num_classes=3, pretrained="coco.pth")  # weights from elsewhere
    bicsnet.default_input_size("bicsnet_48")  # 640, Table I
    result = bicsnet.train("run.yaml")                  # or a RunConfig / dict
    metrics = bicsnet.evaluate(result.weights)
    preds = bicsnet.predict(result.weights, ["photo.jpg"], out="preds")
    FasterRCNN(bicsnet.torchvision_backbone("bicsnet_48"), num_classes=3)   # torchvision's detectors
    timm.create_model("bicsnet_48", features_only=True)                    # timm (when installed)
"""
from .api import RunResult, evaluate, predict, train
from .arch.backbone import BiCSNet, BiCSNetConfig
from .config import ModelConfig, RunConfig
from .data.spec import DataSpec
from .errors import BicsnetError, CheckpointError, ConfigError, DataError
from .integrations import torchvision_backbone
from .integrations.timm import register_when_timm_imported
from .reparam import deploy
from .models import create_model, create_model_from_config, default_input_size, get_entry, list_models
from .tasks import TASKS, get_task
from .weights import load_backbone_weights, load_weights

__version__ = "0.1.0"

# timm's registry gets every bicsnet classifier/backbone: now if timm is imported, else after `import timm`.
register_when_timm_imported()

__all__ = [
    "deploy",
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
    "load_backbone_weights",
    "load_weights",
    "torchvision_backbone",
    "evaluate",
    "predict",
    "train",
    "__version__",
]
