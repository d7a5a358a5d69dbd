"""bertforge: pretrain, fine-tune, evaluate and convert BERT models on PyTorch."""

from bertforge.config import BertConfig, PRESETS
from bertforge.errors import BertforgeError

__version__ = "0.1.0"
__all__ = ["BertConfig", "PRESETS", "BertforgeError", "__version__"]
