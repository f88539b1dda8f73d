"""Kept for imports written before :mod:`pipeline.layout` (the one owner of every output path)."""

from pipeline.layout import *  # noqa: F401,F403
from pipeline.layout import __all__  # noqa: F401
