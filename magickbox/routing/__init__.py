"""Routing: send finished jobs' files to DICOM nodes by rule, durably."""
