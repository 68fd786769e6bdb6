"""Hospital data in and out: pull series from a PACS and push DICOM SEG back."""
