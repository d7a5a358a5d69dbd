"""The run configs of the task commands (`finetune`, `predict` and `evaluate` of SQuAD and
GLUE, `pretrain`): their flags, defaults and checks.

They live apart from the tasks that run them so that reading them imports no torch: the CLI
builds each command's `--help` from them alone. Each extends `runconfig.PredictRun` (runs that
only predict, which choose the inference engine) or `TrainRun` (runs that can train); SQuAD's
data groups extend `SquadSettings`, which `serve` and the Python API share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bertforge.data.glue import GlueTask, get_task
from bertforge.data.squad import SquadSettings
from bertforge.errors import ConfigError
from bertforge.runconfig import PredictRun, TrainArgs, TrainRun
from bertforge.validation import check_at_least, check_types


def parse_slice(text: str | None, what: str) -> slice | None:
    """--train_articles / --predict_articles: a Python slice written as text ('0:38', '38:')."""
    if text is None:
        return None
    try:
        parts = [int(p) if p.strip() else None for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3) or parts[2:] == [0]:
        raise ConfigError(f"--{what} {text!r}: expected a Python slice such as '0:38' or '38:'")
    return slice(*parts)


@dataclass(kw_only=True)
class EvalDuringTraining:
    """Evaluation on the dev data while fine-tuning."""

    eval_every: int | None = None
    """Evaluate on the dev data every N optimizer steps and after the last one (eval records in
    metrics.jsonl and the trackers)."""
    save_best: bool = False
    """Make the weights of the best evaluation (the task's main metric: SQuAD F1, GLUE's first
    metric) the run's final model; bertforge.json records their step."""

    def __post_init__(self) -> None:
        check_types(self, "evaluation")
        check_at_least(self, 1, ("eval_every",))
        if self.save_best and self.eval_every is None:
            raise ConfigError("--save_best needs --eval_every: the best of which evaluations?")


# ---- SQuAD -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SquadPredictData(SquadSettings):
    """The SQuAD file to predict and Google's run_squad.py windowing and decoding settings."""

    predict_file: str | None = None
    """SQuAD JSON to predict (and, when it has answers, to evaluate)."""
    predict_articles: str | None = None
    """Use only these articles of predict_file, as a Python slice, e.g. '38:48'."""
    predict_batch_size: int = 64
    """Sequences per device per prediction batch."""
    version_2_with_negative: bool = False
    """SQuAD v2.0: questions marked is_impossible have no answer in their context. Training learns
    the null span at [CLS] for them; prediction adds the null answer "", writes null_odds.json and
    scores with the official v2.0 metric."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, 1, ("predict_batch_size",))
        parse_slice(self.predict_articles, "predict_articles")


@dataclass(kw_only=True)
class SquadData(SquadPredictData):
    """SQuAD files and Google's run_squad.py windowing and decoding settings."""

    train_file: str | None = None
    """SQuAD JSON to train on."""
    train_articles: str | None = None
    """Use only these articles of train_file, as a Python slice: '0:38' (the first 38)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_slice(self.train_articles, "train_articles")


@dataclass(kw_only=True)
class SquadPredictRun(PredictRun):
    """Predict SQuAD answers with a fine-tuned checkpoint, and score them when the file has answers."""

    output_dir: str = "runs/squad_predict"
    """Where predictions.json, nbest_predictions.json, eval_results.json (and for SQuAD v2.0
    null_odds.json) go."""
    do_eval: bool = True
    """Score the predictions when predict_file has answers."""
    question: str | None = None
    """Instead of predict_file: one question to answer about --context; prints the answer as JSON
    ({"answer", "score", "start", "end"}: start/end are character offsets in the context)."""
    context: str | None = None
    """The text to find the answer to --question in."""
    input_jsonl: str | None = None
    """Instead of predict_file: JSON lines {"id", "question", "context"} to answer ('-': standard
    input); writes {"id", "answer", "score", "start", "end"} lines to output_jsonl."""
    output_jsonl: str | None = None
    """Where the answers to --input_jsonl go as JSON lines (default, or '-': standard output)."""
    data: SquadPredictData = field(default_factory=SquadPredictData)

    @property
    def predicting(self) -> bool:
        return True

    @property
    def raw_text(self) -> bool:
        """Whether the questions come as text (--question/--context, --input_jsonl), not a file."""
        return self.question is not None or self.context is not None or bool(self.input_jsonl)


@dataclass(kw_only=True)
class SquadRun(TrainRun):
    """Fine-tune BERT on SQuAD v1.1 or v2.0, predict answers, and score them with the official metric."""

    output_dir: str = "runs/squad"
    """The run directory: model, metrics.jsonl, checkpoints, predictions, scores."""
    do_train: bool = False
    """Fine-tune on train_file."""
    do_predict: bool = False
    """Predict predict_file after training."""
    do_eval: bool = True
    """Score the predictions when predict_file has answers."""
    data: SquadData = field(default_factory=SquadData)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(learning_rate=3e-5, num_train_epochs=2.0,
                                                               train_batch_size=32))
    evaluation: EvalDuringTraining = field(default_factory=EvalDuringTraining)
    """EM/F1 on predict_file while training (--eval_every, --save_best)."""

    @property
    def predicting(self) -> bool:
        return self.do_predict


@dataclass
class EvaluateArgs:  # not kw_only: its required fields are the command's positional arguments
    """Official SQuAD v1.1 or v2.0 evaluation of a predictions file (v2.0 when the data file's
    questions carry is_impossible)."""

    data_file: str
    """The SQuAD JSON with gold answers."""
    predictions_file: str
    """JSON object: question id -> answer text."""
    output_file: str | None = None
    """Where to write the scores as JSON (default: <predictions_file stem>_eval.json beside it)."""
    na_prob_file: str | None = None
    """SQuAD v2.0: JSON object question id -> no-answer score (null_odds.json); adds best_exact,
    best_f1 and their thresholds."""
    na_prob_thresh: float = 1.0
    """SQuAD v2.0: a question whose no-answer score exceeds this counts as answered "" (the
    official script's default, 1.0)."""

    def __post_init__(self) -> None:
        check_types(self, "evaluate squad")


# ---- GLUE ------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class GlueData:
    """Which GLUE task and where its files are."""

    task_name: str = "mrpc"
    """cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli (GLUE names like SST-2 work too; also --task)."""
    data_dir: str | None = None
    """The task's GLUE directory (or the GLUE root holding it)."""
    max_seq_length: int = 128
    """Tokens per example: [CLS] sentence A [SEP] (sentence B [SEP]); longer pairs are cut."""
    eval_batch_size: int = 64
    """Sequences per device per prediction batch (also --predict_batch_size)."""
    max_tokens_per_batch: int | None = None
    """Also cap each prediction batch at this many tokens (rows x its longest example, rounded up
    to 8; examples are batched by length): short examples then share bigger batches, so every
    batch costs about the same. Predictions do not change."""
    label_order: str | list[str] | None = None
    """What a trained head's outputs are, in its output order, comma-separated: e.g.
    entailment,neutral,contradiction for an MNLI model trained on Hugging Face's GLUE data set.
    Needed where the checkpoint does not name them (LABEL_0, LABEL_1, LABEL_2, or no names at
    all) and the task has more than two classes; it overrides the checkpoint's names. The task's
    class names or GLUE's file labels, in any case."""

    def __post_init__(self) -> None:
        check_types(self, "glue")
        task = get_task(self.task_name)  # an unknown task fails here, naming the valid ones
        check_at_least(self, 1, ("max_seq_length", "eval_batch_size", "max_tokens_per_batch"))
        if isinstance(self.label_order, str):
            self.label_order = [x.strip() for x in self.label_order.split(",")]
        if self.label_order is not None:
            check_label_order(self.label_order, task)


def check_label_order(names: list[str], task: GlueTask) -> None:
    """A ConfigError unless `names` name each of the task's classes once."""
    if task.label_names is None:
        raise ConfigError(f"--label_order: GLUE {task.name} is a regression task; its head has one output, "
                          "not classes")
    valid = ", ".join(task.label_names)
    unknown = [x for x in names if task.class_id(x) is None]
    if unknown:
        raise ConfigError(f"--label_order: {', '.join(map(repr, unknown))} is not a GLUE {task.name} label; "
                          f"its labels are {valid}")
    ids = [task.class_id(x) for x in names]
    if len(names) != len(task.label_names) or len(set(ids)) != len(ids):
        raise ConfigError(f"--label_order must name each of GLUE {task.name}'s {len(task.label_names)} labels "
                          f"({valid}) once, in the head's output order; got {','.join(names)}")


@dataclass(kw_only=True)
class GlueEvalRun(PredictRun):
    """Evaluate (dev metrics) and/or predict (test-set submission files) with a fine-tuned checkpoint."""

    output_dir: str = "runs/glue_eval"
    """Where eval_results.json and the submission files go."""
    do_eval: bool = False
    """Score the dev set(s) with the task's official metrics."""
    do_predict: bool = False
    """Write the test set's GLUE submission file(s) into output_dir."""
    input_jsonl: str | None = None
    """Instead of data_dir: JSON lines {"id", "text_a", "text_b" (optional)} to classify ('-':
    standard input); writes {"id", "label", "score", "probabilities"} lines to output_jsonl."""
    output_jsonl: str | None = None
    """Where the classes of --input_jsonl go as JSON lines (default, or '-': standard output)."""
    data: GlueData = field(default_factory=GlueData)

    @property
    def raw_text(self) -> bool:
        """Whether the texts come as JSON lines (--input_jsonl), not the task's files."""
        return bool(self.input_jsonl)


@dataclass(kw_only=True)
class GluePredictRun(GlueEvalRun):
    """Write GLUE test-set submission files with a fine-tuned checkpoint (--do_eval scores dev too)."""

    do_predict: bool = True
    """Write the test set's GLUE submission file(s) into output_dir."""


@dataclass(kw_only=True)
class GlueEvaluateRun(GlueEvalRun):
    """GLUE dev-set metrics of a fine-tuned checkpoint (--do_predict writes submissions too)."""

    do_eval: bool = True
    """Score the dev set(s) with the task's official metrics."""


@dataclass(kw_only=True)
class GlueRun(TrainRun):
    """Fine-tune and/or evaluate BERT on a GLUE task."""

    output_dir: str = "runs/glue"
    """The run directory: model, metrics.jsonl, checkpoints, eval results, submissions."""
    do_train: bool = False
    """Fine-tune on the train split."""
    do_eval: bool = False
    """Score the dev set(s) with the task's official metrics."""
    do_predict: bool = False
    """Write the test set's GLUE submission file(s) into output_dir."""
    data: GlueData = field(default_factory=GlueData)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(learning_rate=2e-5, train_batch_size=32))
    evaluation: EvalDuringTraining = field(default_factory=EvalDuringTraining)
    """Dev metrics while training (--eval_every, --save_best)."""


# ---- pretraining -----------------------------------------------------------------------------


@dataclass(kw_only=True)
class PretrainData:
    """The training data, the evaluation set, and when to evaluate and stop (MLPerf's loop)."""

    input_dir: str | list[str] | None = None
    """The training data: a directory `bertforge prepare pretraining` wrote (recommended: masks
    are drawn anew each epoch), or files NVIDIA's, Habana's, Google's or MLPerf's scripts
    prepared (HDF5 or TFRecord, read with the masks they hold) as a directory, a glob,
    comma-separated paths or a list. Also --input_files_dir, --input_file."""
    eval_dir: str | list[str] | None = None
    """A separate evaluation set, in any format input_dir takes (prepared data: its train
    split). Default: the held_out split of prepared input_dir data; other data has none. Also
    --eval_files_dir."""
    eval_every: int | None = None
    """Evaluate MLM/NSP accuracy every N steps (and at the end)."""
    samples_between_eval: int | None = None
    """Evaluate every this many training samples instead (MLPerf's schedule), and at the end.
    Also --eval_iter_samples."""
    samples_start_eval: int = 0
    """With samples_between_eval: no evaluation before this many training samples. Also
    --eval_iter_start_samples."""
    stop_threshold: float | None = None
    """End training at the first evaluation whose masked-LM accuracy reaches this (MLPerf:
    0.720); metrics.jsonl gets a run_stop record with the time to train. Also --target_mlm_accuracy."""
    max_samples_termination: int | None = None
    """End training once this many samples are trained (MLPerf's budget; max_steps still holds)."""
    eval_batch_size: int = 64
    """Sequences per device per evaluation batch."""
    max_eval_samples: int | None = None
    """Evaluate on the first this many samples of the evaluation set (all by default; MLPerf:
    10000). Also --num_eval_examples."""
    eval_on_train: bool = False
    """Data without a held-out split and no eval_dir: evaluate on the training files themselves,
    as Google's run_pretraining.py --do_eval does (set by its flags; a measure of fit, not of
    generalisation)."""
    shuffle_window: int = 1
    """HDF5/TFRecord data: files whose samples are shuffled together (each epoch shuffles the
    file order, then the samples of each window of this many files). A rank holds about this
    many files in memory."""

    def __post_init__(self) -> None:
        check_types(self, "pretrain")
        check_at_least(self, 1, ("eval_every", "samples_between_eval", "max_samples_termination", "eval_batch_size",
                                 "max_eval_samples", "shuffle_window"))
        check_at_least(self, 0, ("samples_start_eval",))
        if self.eval_every and self.samples_between_eval:
            raise ConfigError("--eval_every and --samples_between_eval both set when to evaluate; give one")
        if self.samples_start_eval and not self.samples_between_eval:
            raise ConfigError("--samples_start_eval delays --samples_between_eval's schedule; give both")
        if self.stop_threshold is not None:
            if not 0.0 < self.stop_threshold <= 1.0:
                raise ConfigError(f"--stop_threshold is a masked-LM accuracy in (0, 1], got {self.stop_threshold}")
            if not (self.eval_every or self.samples_between_eval):
                raise ConfigError("--stop_threshold is checked at each evaluation: give --samples_between_eval "
                                  "(or --eval_every)")


def _pretrain_defaults() -> TrainArgs:
    # NVIDIA's phase-1 hyperparameters (global batch 65,536 through accumulation).
    return TrainArgs(learning_rate=6e-3, warmup_proportion=0.2843, max_steps=7038, train_batch_size=64,
                     weight_decay=0.01, max_grad_norm=1.0, log_every=10, optimizer="lamb", schedule="poly",
                     schedule_power=0.5)


@dataclass(kw_only=True)
class PretrainRun(TrainRun):
    """Pretrain BERT with masked LM + NSP and LAMB."""

    output_dir: str = "runs/pretrain"
    """The run directory: model, metrics.jsonl, checkpoints, train_summary.json."""
    phase2: bool = False
    """Phase 2: start from --init_checkpoint's weights (phase 1's output_dir) with a fresh
    optimizer and schedule, on seq-512 data. NVIDIA's spelling, --phase2 --resume_from_checkpoint
    --phase1_end_step N in a directory holding its ckpt_N.pt, starts from that file's weights and
    LAMB moments with the step count reset, as run_pretraining.py does; in the output_dir of a
    bertforge phase 1, it starts from that run's model and writes phase 2 into output_dir/phase2."""
    phase1_end_step: int | None = None
    """NVIDIA's run_pretraining.py: the last step of phase 1, which tells its phase-1 checkpoints
    (ckpt_<step <= N>.pt) from phase-2 ones (ckpt_<N + phase-2 step>.pt) in output_dir."""
    resume_step: int | None = None
    """NVIDIA's run_pretraining.py: resume from output_dir/ckpt_<resume_step>.pt rather than the latest."""
    do_train: bool = True
    """Pretraining trains (the reference scripts' --do_train); false is refused."""
    do_eval: bool = True
    """Evaluate MLM/NSP accuracy on the evaluation set (--eval_dir, or prepared data's held-out
    split): at the end, and as --eval_every / --samples_between_eval say."""
    max_seq_length: int | None = None
    """As the reference scripts pass it: checked against the prepared data, which fixes it."""
    max_predictions_per_seq: int | None = None
    """As the reference scripts pass it: checked against the prepared data, which fixes it."""
    mlm_bias_init: Literal["zero", "unigram"] = "zero"
    """The masked-LM output bias of a model that starts from random weights: zero (Google's and
    NVIDIA's init) or unigram, the log frequencies of the targets in the training data, so that
    the model predicts the corpus's word frequencies from step 0. From zero, the first few
    hundred updates learn those frequencies mostly through the tied word embeddings (the bias
    moves about one learning rate per update, and the log frequencies span over 10 nats), which
    leaves the embeddings lined up on word frequency: short runs then fine-tune worse than random
    weights (benchmarks/ACCURACY.md). Prepared data (`bertforge prepare pretraining`) only."""
    data: PretrainData = field(default_factory=PretrainData)
    train: TrainArgs = field(default_factory=_pretrain_defaults)
