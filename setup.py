"""Build only the Cython modules (the engine, the columnar kernels, the wire codec);
everything else is declared in pyproject.toml.

``TIERGATE_NO_EXTENSIONS=1`` at build time skips the extension (the pure-Python
engine is then used). Otherwise a failed compile fails the build loudly.
"""

import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("TIERGATE_NO_EXTENSIONS", "") in ("", "0"):
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension(
                "tiergate._native.engine",
                ["ext/tiergate/_native/engine.pyx"],
                extra_compile_args=["-O2"],
            ),
            Extension(
                "tiergate._native.columns",
                ["ext/tiergate/_native/columns.pyx"],
                extra_compile_args=["-O2"],
            ),
            Extension(
                "tiergate._native.wire",
                ["ext/tiergate/_native/wire.pyx"],
                extra_compile_args=["-O2"],
            ),
        ],
        include_path=["ext"],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )

setup(ext_modules=ext_modules)
