# The C core is built by cffi in API mode; everything else lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["fwd/_build_native.py:ffibuilder"])
