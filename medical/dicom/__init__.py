"""DICOM: scan folders into series, load them as MONAI MetaTensors, align labels, de-identify."""
