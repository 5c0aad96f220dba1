"""Only the optional native scanner lives here; everything else is in pyproject.toml.

`optional=True`: where no C compiler is available the build still succeeds and
`monitor.proxy.capture` uses its pure-Python path (same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "monitor.proxy._logprob_scan",
            ["monitor/proxy/_logprob_scan.c"],
            optional=True,
        )
    ]
)
