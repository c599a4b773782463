"""JEST for open_clip models, as a drop-in for your own loop: the names of jestkit.openclip
(where they live and are documented), importable from here too."""

from jestkit.openclip import *  # noqa: F403
from jestkit.openclip import __all__  # noqa: F401
