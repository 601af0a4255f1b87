"""bicsnet where users already are: timm's registry, torchvision's detectors, torch.hub.

* :mod:`bicsnet.integrations.timm`: every bicsnet model with a classifier and a
  pyramid backbone in timm's registry (``timm.create_model("bicsnet_48")``,
  ``features_only=True``, ``pretrained_cfg_overlay=dict(file=...)``), registered
  when timm is imported; nothing happens where timm is not installed.
* :mod:`bicsnet.integrations.torchvision`: :func:`torchvision_backbone`, a backbone
  torchvision's ``FasterRCNN`` / ``MaskRCNN`` / ``KeypointRCNN`` / ``RetinaNet`` /
  ``FCOS`` take with their default anchors and RoI poolers.
* ``hubconf.py`` (the repository root): one ``torch.hub`` entry per registered model.

Nothing here is imported by :mod:`bicsnet.models`; these modules only call its
public API, so no import cycle can form.
"""
from .torchvision import TorchvisionBackbone, torchvision_backbone

__all__ = ["TorchvisionBackbone", "torchvision_backbone"]
