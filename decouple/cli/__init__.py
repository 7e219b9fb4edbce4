"""The ``decouple`` command line: ``inspect``, ``splits``, ``export`` and ``demo`` over the Python API.

``main.py`` (entry point and the command registry), ``arguments.py`` (shared arguments),
``commands.py`` (inspect, splits, export), ``demo.py``, ``model_spec.py`` (``torchvision:NAME``,
``pkg.module:factory``), ``tables.py`` (rich tables).
"""

from . import commands, demo  # noqa: F401  (each registers its commands)
from .main import COMMANDS, USAGE_ERROR, Command, build_parser, main, register_command

__all__ = ["Command", "COMMANDS", "register_command", "build_parser", "main", "USAGE_ERROR"]
