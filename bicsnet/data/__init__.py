"""Datasets, transforms, collation and the synthetic dataset generator."""
from bicsnet.data.coco import CocoDetection, load_coco_json, make_coco
from bicsnet.data.collate import classification_collate, detection_collate, segmentation_collate, segmentation_collate_unpadded
from bicsnet.data.folder import ImageFolderDataset
from bicsnet.data.image import IMAGE_EXTENSIONS, load_image, load_pil_image
from bicsnet.data.masks import IGNORE_LABEL, MaskDataset, SegmentationFolder, read_label_png
from bicsnet.data.palette import voc_colormap, voc_palette
from bicsnet.data.synthetic import generate as generate_synthetic
from bicsnet.data import transforms
from bicsnet.data.transforms import *  # noqa: F403  (its __all__, re-exported below)
from bicsnet.data.voc import VOC_CLASSES, VOCSegmentation, read_class_names

__all__ = [
    "CocoDetection",
    "load_coco_json",
    "make_coco",
    "VOCSegmentation",
    "VOC_CLASSES",
    "read_class_names",
    "SegmentationFolder",
    "MaskDataset",
    "read_label_png",
    "IGNORE_LABEL",
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
]
__all__ += transforms.__all__
