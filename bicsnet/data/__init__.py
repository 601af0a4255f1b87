"""Datasets, transforms, collation and the synthetic dataset generator."""
from bicsnet.data.coco import CocoDetection, load_coco_json, make_coco
from bicsnet.data.collate import classification_collate, detection_collate, segmentation_collate, segmentation_collate_unpadded
from bicsnet.data.folder import ImageFolderDataset
from bicsnet.data.image import IMAGE_EXTENSIONS, load_image, load_pil_image
from bicsnet.data.palette import voc_colormap, voc_palette
from bicsnet.data.synthetic import generate as generate_synthetic
from bicsnet.data.transforms import (
    RandomCropPad,
    SanitizeDetectionTarget,
    classification_eval_transforms,
    classification_train_transforms,
    detection_eval_transforms,
    detection_train_transforms,
    segmentation_eval_transforms,
    segmentation_train_transforms,
)
from bicsnet.data.voc import VOC_CLASSES, VOCSegmentation, read_class_names

__all__ = [
    "CocoDetection",
    "load_coco_json",
    "make_coco",
    "VOCSegmentation",
    "VOC_CLASSES",
    "read_class_names",
    "ImageFolderDataset",
    "load_image",
    "load_pil_image",
    "IMAGE_EXTENSIONS",
    "voc_palette",
    "voc_colormap",
    "generate_synthetic",
    "detection_collate",
    "segmentation_collate",
    "segmentation_collate_unpadded",
    "classification_collate",
    "RandomCropPad",
    "SanitizeDetectionTarget",
    "detection_train_transforms",
    "detection_eval_transforms",
    "segmentation_train_transforms",
    "segmentation_eval_transforms",
    "classification_train_transforms",
    "classification_eval_transforms",
]
