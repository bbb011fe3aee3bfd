"""Only the optional C accelerators; all metadata is in pyproject.toml.

``optional=True``: where one cannot be compiled (no C compiler, no OpenMP), installation goes on without it
and the pure-Python path is used: ``skelact.data.ntu``'s parser (same results, slower), PyTorch's
BatchNorm, add and ReLU in ``skelact.models.bnact`` (the same function to float rounding, slower),
PyTorch's max-pooling in ``skelact.models.tpool`` (the same results) and batched matrix products in
``skelact.models.ctrgcn``'s aggregation (the same function to float rounding, slower)."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("skelact.data._ntuparse", ["src/skelact/data/_ntuparse.c"], optional=True),
    Extension("skelact.models._fused", ["src/skelact/models/_fused.c"], optional=True,
              extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"], extra_link_args=["-fopenmp"]),
])
