"""The one compiled part of hpcvit; everything else is declared in pyproject.toml.

``hpcvit.data._reorder`` is the channels-last -> channels-first copy of HDF5 images. It is optional: where it
cannot be compiled (no C compiler or Python headers) the install goes on and numpy does the copy.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("hpcvit.data._reorder", ["hpcvit/data/_reorder.c"], optional=True,
                             extra_compile_args=["-O3"])])
