"""Fine-tuning (being split into modules; see loop.py)."""
from nonlocal_zoo.training.loop import *  # noqa: F401,F403
from nonlocal_zoo.training.loop import __getattr__  # noqa: F401
