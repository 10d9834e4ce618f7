"""Test-data helpers shared by the test suite and the benchmarks (synthetic DICOM generation)."""
