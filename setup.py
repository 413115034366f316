"""Build hook for the optional C accelerator of the collector's OTLP trace conversion.

Everything else is declared in pyproject.toml. The extension is optional: without a C compiler
the install still succeeds and the collector uses its pure-Python walk (same output, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "trace_ptune.collector._otlpwalk",
            ["trace_ptune/collector/_otlpwalk.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
