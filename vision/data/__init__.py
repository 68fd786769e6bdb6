"""Vision data in the formats users have: COCO JSON, Pascal VOC XML, image + mask folders,
ImageFolder trees and CSVs; validated, with counted skips, and paired v2 transforms."""

from scalpel.vision.data.coco import load_coco, rasterize
from scalpel.vision.data.imagefolder import ClassificationData, load_csv, load_image_folder
from scalpel.vision.data.images import DataReport, load_rgb
from scalpel.vision.data.masks import SegmentationData, SegmentationItem, load_coco_masks, load_mask_folders
from scalpel.vision.data.records import DetectionData, DetectionRecord, sanitize_boxes
from scalpel.vision.data.transforms import (
    IGNORE_INDEX,
    AspectRatioBatchSampler,
    ClassificationDataset,
    DetectionDataset,
    SegmentationDataset,
    classification_transforms,
    collate_detection,
    detection_transforms,
    segmentation_transforms,
)
from scalpel.vision.data.voc import load_voc

__all__ = [
    "IGNORE_INDEX",
    "AspectRatioBatchSampler",
    "ClassificationData",
    "ClassificationDataset",
    "DataReport",
    "DetectionData",
    "DetectionDataset",
    "DetectionRecord",
    "SegmentationData",
    "SegmentationDataset",
    "SegmentationItem",
    "classification_transforms",
    "collate_detection",
    "detection_transforms",
    "load_coco",
    "load_coco_masks",
    "load_csv",
    "load_image_folder",
    "load_mask_folders",
    "load_rgb",
    "load_voc",
    "rasterize",
    "sanitize_boxes",
    "segmentation_transforms",
]
