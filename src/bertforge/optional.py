"""Optional dependencies: imported when a feature needs them, with an error naming the extra
that installs them (`pip install 'bertforge[export]'`) instead of an ImportError traceback.
The core install stays lean: ONNX export, run tracking, plots and GLUE's metrics each have an
extra in pyproject.toml."""

from __future__ import annotations

import importlib
from types import ModuleType

from bertforge.errors import ConfigError


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or raise a ConfigError saying that `what` needs it and which extra
    installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the Python package {module.split('.')[0]!r}, which is not "
                          f"installed: pip install 'bertforge[{extra}]'") from None
