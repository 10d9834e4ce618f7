"""Receive: DICOM in. A pynetdicom SCP stores files as received and groups them into sends."""
