"""Settings for a developer's machine: the default of ``manage.py``."""

from .base import *  # noqa: F403
from .base import env

DEBUG = env.bool("DEBUG", default=True)
