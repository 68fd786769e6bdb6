"""Medical imaging: DICOM loading and de-identification, segmentation and classification, site adaptation."""
