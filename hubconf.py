"""torch.hub entry points: one per registered bicsnet model, generated from the registry.

    model = torch.hub.load(".", "bicsnet_48s", source="local", task="detection", num_classes=3)  # in a checkout
    torch.hub.list("OWNER/bicsnet"), torch.hub.help("OWNER/bicsnet", "bicsnet_48s")  # from GitHub

(``torch.hub.list`` and ``torch.hub.help`` read GitHub repositories only; in a
checkout, ``help`` is each entry's ``__doc__``.)

Each entry is ``bicsnet.create_model(name, task, num_classes, **options)``; a
model registered later gets its entry with no change here. There are no
published BiCSNet weights to download (``pretrained=PATH`` takes a local file).
"""
import bicsnet as _bicsnet

dependencies = ["torch", "torchvision"]


def _entry(name):
    """The hub entry point of registered model ``name``."""
    entry = _bicsnet.get_entry(name)
    tasks = ", ".join(entry.tasks)

    def load(task=entry.tasks[0], num_classes=None, **options):
        return _bicsnet.create_model(name, task, num_classes, **options)

    load.__name__ = load.__qualname__ = name
    load.__doc__ = (
        f"{entry.description}.\n\n"
        f"Returns bicsnet.create_model({name!r}, task, num_classes, **options).\n\n"
        "Args:\n"
        f"    task: one of {tasks} (default {entry.tasks[0]}).\n"
        "    num_classes: classes of the head (every task but backbone).\n"
        "    **options: backbone options (width_mult, norm, activation, ...), the task head's\n"
        "        options, or pretrained=PATH (a local weights file), as for bicsnet.create_model.\n\n"
        f"Input size it was designed for: {entry.input_size} px (bicsnet.default_input_size).\n"
        "Raises bicsnet.ConfigError for an unknown task or option.\n"
    )
    return load


for _name in _bicsnet.list_models():
    globals()[_name] = _entry(_name)
del _name
