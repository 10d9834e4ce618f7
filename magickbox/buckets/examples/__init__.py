"""Example buckets shipped with MagickBox and copied into every new home."""
