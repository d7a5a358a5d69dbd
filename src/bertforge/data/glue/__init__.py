"""GLUE: the nine tasks (`tasks`), their files as GLUE distributes them (`reading`), model
features (`features`) and leaderboard submissions (`submissions`).

Label ids follow the label order of Google's BERT `run_classifier.py` and Hugging Face's GLUE
processors (MNLI: contradiction, entailment, neutral), so heads trained by either line up.
Classes have names (MRPC: not_equivalent, equivalent) for models and their users; files and
submissions keep GLUE's labels ("0", "1").
"""

from bertforge.data.glue.features import GlueFeatures, encode_examples, encode_texts, truncate_pair_lengths
from bertforge.data.glue.reading import GlueExample, read_file, read_split
from bertforge.data.glue.submissions import prediction_ids, write_submission
from bertforge.data.glue.tasks import (
    TASKS, GlueSplit, GlueTask, HeaderlessLayout, SplitKind, get_task, named_labels,
)

__all__ = ["TASKS", "GlueSplit", "GlueTask", "HeaderlessLayout", "SplitKind", "get_task", "named_labels",
           "GlueExample", "read_file", "read_split", "GlueFeatures", "encode_examples", "encode_texts",
           "truncate_pair_lengths", "prediction_ids", "write_submission"]
