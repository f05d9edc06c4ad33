"""Moved: everything here is in :mod:`focalexp.config` (one module for configs); this name stays as an
alias for code written against it and warns once."""

import warnings

from .config import *  # noqa: F401,F403
from .config import __all__  # noqa: F401

warnings.warn("focalexp.overrides moved to focalexp.config", DeprecationWarning, stacklevel=2)
