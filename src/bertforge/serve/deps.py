"""The serve extra's packages, checked in one place: importing this module raises ConfigError
naming the one that is missing, so every server module that needs them imports it first (all
but `config`, which --help reads, and the scheduler, which needs none)."""

from bertforge.errors import ConfigError

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as e:
    raise ConfigError(f"bertforge serve needs FastAPI, uvicorn and prometheus_client ({e.name} is missing): "
                      "pip install \"bertforge[serve]\"") from None
