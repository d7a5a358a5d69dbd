"""Optional dependencies: imported when a feature needs them, with an error naming the extra
that installs them (`pip install 'bertforge[export]'`) instead of an ImportError traceback.
The core install stays lean: ONNX export, run tracking, plots and GLUE's metrics each have an
extra in pyproject.toml."""

from __future__ import annotations

import importlib
from types import ModuleType

from bertforge.errors import ConfigError


def require(module: str, extra: str, what: str, package: str | None = None) -> ModuleType:
    """Import `module`, or raise a ConfigError saying that `what` needs it and which extra
    installs it. `package`: the name pip knows it by, when not the module's."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the Python package {package or module.split('.')[0]!r}, which "
                          f"is not installed: pip install 'bertforge[{extra}]'") from None
