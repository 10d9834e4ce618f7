"""The one compiled part of MagickBox: the structure walk's inner loop (receive/_skim.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler
the package installs and the walk runs in Python (slower; tests/unit/test_structure.py
says so by failing its check that the compiled loop is there).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "magickbox.receive._skim",
            sources=["magickbox/receive/_skim.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
