"""MagickBox: a DICOM processing appliance (receive -> jobs -> buckets -> routing)."""
