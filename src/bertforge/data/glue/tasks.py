"""The GLUE task table: each task's files, columns, labels and metrics.

Columns are named as in the header lines of GLUE's files; label ids follow the label order of
Google's BERT `run_classifier.py` and Hugging Face's GLUE processors. Each class has two
spellings: GLUE's file label, which the files and leaderboard submissions use ("0", "1"), and
its name, which models, the API and the server use (MRPC's not_equivalent, equivalent; the
names of Hugging Face's GLUE data sets). Where the files use names (MNLI, QNLI, RTE) the two are
the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from bertforge.errors import ConfigError

SplitKind = Literal["train", "dev", "test"]


@dataclass(frozen=True)
class GlueSplit:
    """One file of a task. `submission_file` is the leaderboard file name of a test split."""

    name: str
    kind: SplitKind
    file: str
    submission_file: str | None = None

    @property
    def labelled(self) -> bool:
        """Whether GLUE ships labels in this file (its test files have none)."""
        return self.kind != "test"


@dataclass(frozen=True)
class HeaderlessLayout:
    """Column positions (0-based) in a file without a header line: CoLA's train and dev."""

    n_columns: int
    text_a: int
    label: int


@dataclass(frozen=True)
class GlueTask:
    """A GLUE task: where its files are, which columns hold what, and how it is scored.

    Columns are named as in the header lines of GLUE's files. `labels` are the class labels as
    GLUE's files write them, None for STS-B, a regression task; `names` what they mean, where
    the files write numbers (see `label_names`). `metrics` are the keys
    `bertforge.evaluate.glue.compute_metrics` returns.
    """

    name: str
    glue_name: str
    labels: tuple[str, ...] | None
    text_a: str
    text_b: str | None
    label_column: str
    index_column: str
    splits: tuple[GlueSplit, ...]
    metrics: tuple[str, ...]
    headerless: HeaderlessLayout | None = None
    # QQP's real train/dev files hold a few rows broken by a newline inside a question; they
    # are skipped (see `_read_rows`). Every other task treats such a row as an error.
    skip_malformed_rows: bool = False
    names: tuple[str, ...] | None = None

    @property
    def label_names(self) -> tuple[str, ...] | None:
        """Each class's name, by class id: what a model's labels, the API and the server call
        it. GLUE's files and submissions keep `labels`."""
        return self.names or self.labels

    def class_id(self, label: str) -> int | None:
        """The class that `label` stands for: its name or GLUE's file label, in any case, with
        '-' or ' ' for '_' (MNLI's "ENTAILMENT", MRPC's "equivalent" or "1"); None when the
        task has no such class."""
        if self.labels is None:
            return None
        key = _label_key(label)
        for spellings in (self.label_names, self.labels):
            for i, known in enumerate(spellings):
                if _label_key(known) == key:
                    return i
        return None

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Width of the classifier output: the number of classes, 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None

    def split(self, name: str) -> GlueSplit:
        for s in self.splits:
            if s.name == name:
                return s
        raise ConfigError(f"GLUE task {self.name} has no split {name!r}; "
                          f"valid splits: {', '.join(s.name for s in self.splits)}")

    def splits_of(self, kind: SplitKind) -> tuple[GlueSplit, ...]:
        """The splits of one kind: MNLI has two dev and two test splits, every other task one."""
        return tuple(s for s in self.splits if s.kind == kind)


def _standard_splits(glue_name: str) -> tuple[GlueSplit, ...]:
    return (GlueSplit("train", "train", "train.tsv"),
            GlueSplit("dev", "dev", "dev.tsv"),
            GlueSplit("test", "test", "test.tsv", f"{glue_name}.tsv"))


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

TASKS: MappingProxyType[str, GlueTask] = MappingProxyType({t.name: t for t in (
    GlueTask("cola", "CoLA", _BINARY, "sentence", None, "label", "index",
             _standard_splits("CoLA"), ("mcc",),
             # Train/dev columns: source, label, original acceptability mark, sentence.
             headerless=HeaderlessLayout(n_columns=4, text_a=3, label=1),
             names=("unacceptable", "acceptable")),
    GlueTask("sst2", "SST-2", _BINARY, "sentence", None, "label", "index",
             _standard_splits("SST-2"), ("accuracy",), names=("negative", "positive")),
    GlueTask("mrpc", "MRPC", _BINARY, "#1 String", "#2 String", "Quality", "index",
             _standard_splits("MRPC"), ("accuracy", "f1"), names=("not_equivalent", "equivalent")),
    GlueTask("stsb", "STS-B", None, "sentence1", "sentence2", "score", "index",
             _standard_splits("STS-B"), ("pearson", "spearman")),
    GlueTask("qqp", "QQP", _BINARY, "question1", "question2", "is_duplicate", "id",
             _standard_splits("QQP"), ("accuracy", "f1"), skip_malformed_rows=True,
             names=("not_duplicate", "duplicate")),
    GlueTask("mnli", "MNLI", ("contradiction", "entailment", "neutral"), "sentence1",
             "sentence2", "gold_label", "index",
             (GlueSplit("train", "train", "train.tsv"),
              GlueSplit("dev_matched", "dev", "dev_matched.tsv"),
              GlueSplit("dev_mismatched", "dev", "dev_mismatched.tsv"),
              GlueSplit("test_matched", "test", "test_matched.tsv", "MNLI-m.tsv"),
              GlueSplit("test_mismatched", "test", "test_mismatched.tsv", "MNLI-mm.tsv")),
             ("accuracy",)),
    GlueTask("qnli", "QNLI", _NLI2, "question", "sentence", "label", "index",
             _standard_splits("QNLI"), ("accuracy",)),
    GlueTask("rte", "RTE", _NLI2, "sentence1", "sentence2", "label", "index",
             _standard_splits("RTE"), ("accuracy",)),
    GlueTask("wnli", "WNLI", _BINARY, "sentence1", "sentence2", "label", "index",
             _standard_splits("WNLI"), ("accuracy",), names=("not_entailment", "entailment")),
)})


def _label_key(label: str) -> str:
    return label.strip().lower().replace("-", "_").replace(" ", "_")


def named_labels(task: str | None, labels: Sequence[str]) -> list[str]:
    """A checkpoint's class labels with their names, when it records that it was fine-tuned
    for a GLUE task (`task` "glue/mrpc") and every label is one of that task's: a GLUE
    checkpoint that records GLUE's file labels ["0", "1"], as bertforge wrote them before
    classes had names, reads as ["not_equivalent", "equivalent"]. Other labels are kept."""
    t = TASKS.get(_canonical(task.removeprefix("glue/"))) if task and task.startswith("glue/") else None
    names = t.label_names if t is not None else None
    ids = [i for i in (t.class_id(x) for x in labels) if i is not None] if t is not None else []
    if not names or len(ids) != len(labels) or len(set(ids)) != len(ids):
        return list(labels)
    return [names[i] for i in ids]


def _canonical(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def get_task(name: str | GlueTask) -> GlueTask:
    """The task for "mrpc", "MRPC", "SST-2", "sts-b", ... (case, '-' and '_' are ignored)."""
    if isinstance(name, GlueTask):
        return name
    task = TASKS.get(_canonical(name))
    if task is None:
        glue_names = ", ".join(t.glue_name for t in TASKS.values())
        raise ConfigError(f"unknown GLUE task {name!r}; valid tasks: {', '.join(TASKS)} "
                          f"(or their GLUE names: {glue_names})")
    return task
