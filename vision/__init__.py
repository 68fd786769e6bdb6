"""Vision pipelines on torchvision models: detection, segmentation and classification."""
