"""The ``rtlrp`` command line: it parses options and reports; each command's work lives in its app.

Each command imports torch, OpenCV and the engine inside its body, so ``rtlrp --help``
and ``rtlrp --version`` stay fast. :func:`main` is the one top-level handler.
"""
from realtime_lrp.cli.main import cli, main

__all__ = ["cli", "main"]
