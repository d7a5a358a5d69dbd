"""SQuAD v1.1 and v2.0 for BERT, faithful to Google's `run_squad.py`, one stage a module:

- `settings`: the windowing and decoding settings every entry point shares (`SquadSettings`);
- `examples`: reading and validating the JSON file (`read_squad_examples`);
- `features`: doc-stride windows over the WordPiece context (`convert_examples_to_features`);
- `postprocess`: n-best spans back to answer text (`postprocess`; with the null answer of
  SQuAD v2.0, `postprocess_v2`), and the prediction files (`write_predictions`).

Where it differs from Google's code, the difference is about robustness, never about results;
docs/squad.md lists each difference and the measurements behind the design.
"""

from bertforge.data.squad.examples import (Answer, Problem, SquadExample, read_squad_examples,
                                           split_whitespace)
from bertforge.data.squad.features import (ContextTokens, SquadFeatures,
                                           convert_examples_to_features, model_arrays)
from bertforge.data.squad.postprocess import (final_text_span, get_final_text, postprocess,
                                              postprocess_v2, write_predictions)
from bertforge.data.squad.settings import SquadSettings

__all__ = ["Answer", "ContextTokens", "Problem", "SquadExample", "SquadFeatures", "SquadSettings",
           "convert_examples_to_features", "final_text_span", "get_final_text", "model_arrays",
           "postprocess", "postprocess_v2", "read_squad_examples", "split_whitespace",
           "write_predictions"]
