"""Export (being split into modules; see exporter.py)."""
from nonlocal_zoo.export.exporter import *  # noqa: F401,F403
