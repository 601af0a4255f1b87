"""Task models, the model registry and the families that fill it.

Importing this package imports every family module (:mod:`.bicsnet`,
:mod:`.lite`, :mod:`.baselines`), whose decorated entry points register
themselves; the registry itself knows no family.
"""
from . import baselines, bicsnet, lite  # noqa: F401  (registration)
from .factory import create_model, create_model_from_config, load_checkpoint_model, model_meta
from .registry import ModelEntry, default_input_size, get_entry, list_models, register_model

__all__ = [
    "ModelEntry", "create_model", "create_model_from_config", "default_input_size", "get_entry", "list_models",
    "load_checkpoint_model", "model_meta", "register_model",
]  # fmt: skip
