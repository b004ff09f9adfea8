# The C core and the health checker's lanes are built by cffi in API mode; everything else lives
# in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["fwd/_build_native.py:ffibuilder", "healthcheck/_build_lanes.py:ffibuilder"])
