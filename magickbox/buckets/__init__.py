"""Buckets: processing streams found on disk under ``streams/`` and the executors that run them."""
