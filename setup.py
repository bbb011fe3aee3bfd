"""Only the optional C accelerator of the NTU parser; all metadata is in pyproject.toml.

``optional=True``: where it cannot be compiled (no C compiler), installation goes on without it and
``skelact.data.ntu`` uses its pure-Python parser (same results, slower)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("skelact.data._ntuparse", ["src/skelact/data/_ntuparse.c"], optional=True)])
