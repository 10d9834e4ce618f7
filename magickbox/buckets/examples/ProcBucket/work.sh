#!/bin/sh
# MagickBox example bucket "ProcBucket".
# Called by the box as: work.sh <input dir> <output dir> [arguments...]
# The work is done in Python by magickbox.buckets.examples.derive, run with
# the box's own interpreter ($MB_PYTHON) so pydicom/numpy/Pillow are available.
set -eu
exec "${MB_PYTHON:-python3}" -m magickbox.buckets.examples.derive "$@"
