"""bertforge: pretrain, fine-tune, evaluate and convert BERT models on PyTorch.

From Python: `bertforge.load(checkpoint)` gives a `Predictor` that answers questions, classifies
texts and embeds them (see `bertforge.api`).
"""

from bertforge.config import BertConfig, PRESETS
from bertforge.errors import BertforgeError

__version__ = "0.1.0"
__all__ = ["Answer", "BertConfig", "BertforgeError", "Classification", "PRESETS", "Predictor", "load",
           "__version__"]

_API = ("Answer", "Classification", "Predictor", "load")


def __getattr__(name: str):
    # The Python API imports torch; the command line, which imports this package first, loads
    # it only for the commands that need it.
    if name in _API:
        from bertforge import api
        return getattr(api, name)
    raise AttributeError(f"module 'bertforge' has no attribute {name!r}")
