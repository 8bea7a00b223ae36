"""The C part of the package; everything else is declared in pyproject.toml.

The tag scanner's C module is optional: where it cannot be built (no compiler), the install
goes on and core.markup uses its regular expressions, which find the same tags.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "core._tagscan",
            sources=["core/_tagscan.c"],
            depends=["core/_tagscan.h"],
            optional=True,
        )
    ]
)
