"""Task models and the model registry."""
from .registry import TASKS, ModelEntry, create_model, create_model_from_config, default_input_size, get_entry, list_models, register_model

__all__ = ["TASKS", "ModelEntry", "create_model", "create_model_from_config", "default_input_size", "get_entry", "list_models", "register_model"]
