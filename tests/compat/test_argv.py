"""`rewrite_argv` on its own: a reference command line in, the parser's argv and the notes out
(no parsing, no training). The expected command lines are written out from what the reference
scripts mean by their flags."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bertforge.compat import alias_table, rewrite_argv
from bertforge.data.pretraining.config import PrepareConfig
from bertforge.errors import ConfigError
from bertforge.tasks.config import PretrainRun, SquadPredictRun, SquadRun

SQUAD = alias_table(SquadRun)
PRETRAIN = alias_table(PretrainRun)


def rewrite(argv: list[str], aliases=SQUAD) -> list[str]:
    return rewrite_argv(argv, aliases).argv


@pytest.mark.parametrize("argv,expected", [
    (["--learning_rate", "3e-5"], ["--train.learning_rate", "3e-5"]),
    (["--learning_rate=3e-5"], ["--train.learning_rate=3e-5"]),
    (["--do_train"], ["--do_train=true"]),
    (["--do_train", "--do_predict"], ["--do_train=true", "--do_predict=true"]),
    (["--do_train=False"], ["--do_train=false"]),
    (["--do_train", "false"], ["--do_train=false"]),
    (["--nodo_lower_case"], ["--model.do_lower_case=false"]),
    (["--do_lower_case=True"], ["--model.do_lower_case=true"]),
    (["--no-compile"], ["--runtime.compile=false"]),
    (["--bert_config_file", "c.json"], ["--model.bert_model", "c.json"]),
    (["--train.learning_rate", "1"], ["--train.learning_rate", "1"]),
    (["--predict_file", "x.json", "--doc_stride", "64"], ["--data.predict_file", "x.json", "--data.doc_stride", "64"]),
    (["--unknown_flag", "1"], ["--unknown_flag", "1"]),
    (["--use_tpu=False", "--iterations_per_loop", "1000", "--do_train"],
     ["--do_train=true", "--train.adam_bias_correction=false"]),  # Google's AdamWeightDecayOptimizer
    (["--save_checkpoints_steps", "500"], ["--train.save_every", "500"]),
    (["--fp16"], ["--runtime.precision=fp16"]),
    (["--amp", "--bf16=false"], ["--runtime.precision=fp16"]),
    (["--version_2_with_negative=False"], ["--data.version_2_with_negative=false"]),
    (["--version_2_with_negative", "--null_score_diff_threshold", "-1.5"],
     ["--data.version_2_with_negative=true", "--data.null_score_diff_threshold", "-1.5"]),
    (["--precision", "bfloat16"], ["--runtime.precision", "bf16"]),
    (["--max_steps", "-1.0"], ["--train.max_steps", "null"]),
    (["--max_steps=7038.0"], ["--train.max_steps=7038"]),
    (["--max_steps=-1"], ["--train.max_steps=null"]),
    (["--json-summary", "d.json"], ["--runtime.json_summary", "d.json"]),
    (["--dllog_path=d.json"], ["--runtime.json_summary=d.json"]),
    (["--use_habana", "--autocast"], ["--runtime.device=hpu", "--runtime.precision=bf16"]),
    (["--use_torch_compile"], ["--runtime.compile=true"]),
    (["--no_cuda"], ["--runtime.device=cpu"]),
    (["--num_workers=4"], ["--runtime.num_workers=4"]),
])
def test_reference_flag_names(argv, expected):
    assert rewrite(argv) == expected


def test_squad2_flags_reach_the_data_config():
    """Google's absl spelling and NVIDIA's/Hugging Face's bare switch, on both SQuAD commands."""
    assert rewrite(["--version_2_with_negative=True", "--null_score_diff_threshold=-2.0"],
                   alias_table(SquadPredictRun)) == ["--data.version_2_with_negative=true",
                                                     "--data.null_score_diff_threshold=-2.0"]
    assert rewrite(["--version_2_with_negative", "--do_train"]) == [
        "--data.version_2_with_negative=true", "--do_train=true"]


# ---- the families ------------------------------------------------------------------------


@pytest.mark.parametrize("argv,expected", [
    (["--do_train", "--do_predict=false", "--nodo_lower_case", "--do_eval", "0"],
     ["--do_train=true", "--do_predict=false", "--model.do_lower_case=false", "--do_eval=false"]),
    (["--do_train", "yes", "--do_eval", "n"], ["--do_train=true", "--do_eval=false"]),
    (["--no-do_train", "--no_do_eval"], ["--do_train=false", "--do_eval=false"]),
    (["--noamp", "--no-fp16", "--no_use_habana"], []),  # a switch turned off is its default
    (["--resume"], ["--train.resume=true"]),
    (["--resume", "runs/x/checkpoint-10"], ["--train.resume=runs/x/checkpoint-10"]),
    (["--resume", "--do_train"], ["--train.resume=true", "--do_train=true"]),
    (["--noresume"], ["--train.resume=false"]),
    (["--resume_from_checkpoint"], ["--train.resume=true"]),
])
def test_google_absl_booleans(argv, expected):
    assert rewrite(argv) == expected


def test_nvidia_batch_is_per_optimizer_step():
    """run_pretraining.py --train_batch_size 4096 --gradient_accumulation_steps 128: each of the
    128 micro-batches of an optimizer step holds 4096 / 128 = 32 sequences."""
    argv = ["--train_batch_size", "4096", "--gradient_accumulation_steps", "128", "--json-summary", "d.json"]
    argv_out, notes = rewrite_argv(argv, PRETRAIN)
    assert argv_out == ["--train.train_batch_size", "32", "--train.gradient_accumulation_steps", "128",
                        "--runtime.json_summary", "d.json"]
    assert len(notes) == 1 and "micro-batches of 32" in notes[0]


@pytest.mark.parametrize("argv", [
    ["--train_batch_size", "4096", "--gradient_accumulation_steps", "128"],  # no NVIDIA flag: bertforge's micro-batch
    ["--train_batch_size", "64", "--num_accumulation_steps", "4", "--amp"],  # NVIDIA TF's spelling: micro-batch
    ["--train_batch_size", "64", "--gradient_accumulation_steps", "1", "--amp"],
])
def test_batch_is_the_micro_batch_otherwise(argv):
    assert rewrite(argv, PRETRAIN)[:2] == ["--train.train_batch_size", argv[1]]


@pytest.mark.parametrize("extra,message", [
    (["--train_batch_size", "100", "--gradient_accumulation_steps", "8"],
     "must divide by --gradient_accumulation_steps 8"),
    (["--train_batch_size", "64", "--gradient_accumulation_steps", "4", "--global_batch_size", "256"],
     "give one spelling of the batch"),
])
def test_nvidia_batch_refusals(extra, message):
    with pytest.raises(ConfigError, match=message):
        rewrite_argv(["--log_freq", "1", *extra], PRETRAIN)


def test_google_pretraining_optimisation():
    """run_pretraining.py: AdamWeightDecay, linear decay (poly, power 1) over all steps, and
    warmup in steps: 100 of 1000 is a proportion of 0.1."""
    argv, notes = rewrite_argv(["--input_file", "d", "--num_train_steps", "1000", "--num_warmup_steps", "100"],
                               PRETRAIN)
    assert argv == ["--data.input_dir", "d", "--train.max_steps", "1000", "--train.optimizer=adamw",
                    "--train.schedule=poly", "--train.schedule_power=1.0", "--train.warmup_proportion=0.1",
                    "--train.adam_bias_correction=false"]
    assert notes == ["Google's run_pretraining flags: AdamW with linear decay over 1000 steps, 100 warmup steps "
                     "(--optimizer lamb for LAMB)",
                     "Google's AdamWeightDecayOptimizer runs Adam without bias correction: --adam_bias_correction false"]


def test_google_pretraining_defaults_and_mlperf_flags():
    """Without --num_warmup_steps, run_pretraining.py warms up for 10000 steps (of 100000: 0.1);
    MLPerf's --optimizer and --poly_power stay as given."""
    argv = rewrite(["--input_files_dir", "d", "--num_train_steps", "100000", "--optimizer", "lamb",
                    "--poly_power", "0.5"], PRETRAIN)
    assert argv == ["--data.input_dir", "d", "--train.max_steps", "100000", "--train.optimizer", "lamb",
                    "--train.schedule_power", "0.5", "--train.schedule=poly", "--train.warmup_proportion=0.1"]


@pytest.mark.parametrize("argv,message", [
    (["--input_file", "d", "--num_warmup_steps", "100"], "give --num_train_steps"),
    (["--num_train_steps", "10", "--num_warmup_steps", "1.5"], "--num_warmup_steps 1.5: expected a whole number"),
])
def test_google_pretraining_refusals(argv, message):
    with pytest.raises(ConfigError, match=message):
        rewrite_argv(argv, PRETRAIN)


def test_num_warmup_steps_is_pretraining_only():
    """On a command without pretraining data it is no flag (the parser reports it)."""
    assert rewrite(["--num_warmup_steps", "100"]) == ["--num_warmup_steps", "100"]


@pytest.mark.parametrize("argv,expected,note", [
    (["--bert_model", "bert-large-uncased"], ["--model.bert_model", "large", "--model.do_lower_case=true"],
     "--bert_model bert-large-uncased: do_lower_case=true from the name"),
    (["--bert_model", "bert-base-cased", "--bert_config_file", "c.json"],
     ["--model.bert_model", "c.json", "--model.do_lower_case=false"],
     "--bert_model bert-base-cased: do_lower_case=false from the name; the architecture from --bert_config_file"),
    (["--init_checkpoint", "ckpt.pt", "--bert_model", "bert-large-uncased-whole-word-masking"],
     ["--model.init_checkpoint", "ckpt.pt", "--model.do_lower_case=true"],
     "--bert_model bert-large-uncased-whole-word-masking: do_lower_case=true from the name; the architecture "
     "from --init_checkpoint"),
])
def test_bert_model_names(argv, expected, note):
    assert rewrite_argv(argv, SQUAD) == (expected, [note])


def test_an_explicit_casing_wins_over_the_name():
    assert rewrite_argv(["--bert_model", "bert-base-cased", "--do_lower_case"], SQUAD) == (
        ["--model.bert_model", "base", "--model.do_lower_case=true"], [])


def test_intel_mode():
    argv, notes = rewrite_argv(["--mode", "benchmark", "--do_predict"], SQUAD)
    assert argv == ["--do_predict=true"] and notes[0].startswith("--mode benchmark:")
    with pytest.raises(ConfigError, match="--mode train: this command has no mode"):
        rewrite_argv(["--mode=train"], SQUAD)


def test_a_field_named_like_a_reference_flag_is_the_field():
    @dataclass
    class Bench:
        mode: str = "train"
        int8: bool = False

    assert rewrite(["--mode", "infer", "--int8"], alias_table(Bench)) == ["--mode", "infer", "--int8=true"]


@pytest.mark.parametrize("argv,aliases", [
    (["--int8=false"], SQUAD), (["--int8", "0"], SQUAD), (["--start_warmup_step", "0"], SQUAD),
    (["--resume_phase2=False"], SQUAD), (["--do_predict"], alias_table(SquadPredictRun)),
    (["--do_train", "false"], alias_table(SquadPredictRun)),
])
def test_refused_flags_at_their_default_are_accepted(argv, aliases):
    assert rewrite_argv(argv, aliases) == ([], [])


def test_every_refused_value_in_one_error():
    with pytest.raises(ConfigError) as e:
        rewrite_argv(["--int8", "--start_warmup_step=5", "--fp16", "--bf16", "--max_steps", "10.5"], SQUAD)
    message = str(e.value)
    for part in ("--int8: int8 is for inference (predict, serve, export)", "--start_warmup_step=5: warmup starts at step 0",
                 "--fp16 and --bf16 ask for different precisions", "--max_steps 10.5: expected a whole number"):
        assert part in message
    with pytest.raises(ConfigError, match="--do_train=true: this command does not train"):
        rewrite_argv(["--do_train"], alias_table(SquadPredictRun))


def test_vendor_knobs_become_notes():
    argv, notes = rewrite_argv(["--use_fused_lamb", "--opt_level", "O2", "--horovod=true", "--do_train"], SQUAD)
    # NVIDIA's fine-tuning (a port of it, by --use_fused_lamb) runs Adam without bias correction
    assert argv == ["--do_train=true", "--train.adam_bias_correction=false"]
    assert [n.split(":")[0] for n in notes] == ["--use_fused_lamb", "--opt_level", "--horovod",
                                                "NVIDIA's fine-tuning (BertAdam, FusedAdam(bias_correction=False)) "
                                                "runs Adam without bias correction"]


def test_thread_flags_belong_before_the_command():
    with pytest.raises(ConfigError, match="--num_intra_threads sets a process-wide thread pool"):
        rewrite_argv(["--num_intra_threads", "4"], SQUAD)


@pytest.mark.parametrize("argv,expected_steps", [
    (["--steps_this_run", "10", "--max_steps", "10"], ["--train.max_steps", "10"]),
    (["--steps_this_run", "-1", "--max_steps", "10"], ["--train.max_steps", "10"]),
])
def test_steps_this_run_that_changes_nothing(argv, expected_steps):
    assert rewrite(argv, PRETRAIN) == expected_steps


def test_steps_this_run_that_would_stop_early():
    with pytest.raises(ConfigError, match="--steps_this_run 5: bertforge runs to --max_steps"):
        rewrite_argv(["--steps_this_run", "5", "--max_steps", "10"], PRETRAIN)


def test_create_pretraining_data_output_file():
    prepare = alias_table(PrepareConfig)
    argv, notes = rewrite_argv(["--output_file", "shards"], prepare)
    assert argv == ["--output_dir", "shards"] and notes[0].startswith("--output_file shards: written as a directory")
    for target in ("wiki.tfrecord", "a,b", "out.hdf5"):
        with pytest.raises(ConfigError, match="bertforge writes a directory of shards"):
            rewrite_argv(["--output_file", target], prepare)


def test_positional_words_and_the_double_dash_pass_through():
    assert rewrite(["src", "--learning_rate", "1", "--", "--x"]) == ["src", "--train.learning_rate", "1", "--", "--x"]


def test_it_is_pure():
    argv = ["--bert_model", "bert-base-uncased", "--train_batch_size", "64", "--gradient_accumulation_steps", "2",
            "--amp"]
    before = list(argv)
    first = rewrite_argv(argv, SQUAD)
    assert argv == before
    assert rewrite_argv(argv, SQUAD) == first


# ---- the alias table -----------------------------------------------------------------------


@dataclass
class _A:
    size: int = 1
    lr: float = 0.1


@dataclass
class _B:
    size: int = 2


@dataclass
class _Run:
    a: _A = field(default_factory=_A)
    b: _B = field(default_factory=_B)
    do_train: bool = False


def test_flat_names_only_where_unique():
    table = alias_table(_Run)
    assert table["lr"] == ("a.lr", "value") and table["do_train"] == ("do_train", "bool")
    assert "size" not in table and table["a.size"] == ("a.size", "value") and table["b.size"] == ("b.size", "value")
    assert "bert_config_file" not in table  # an alias only where its field is


def test_aliases_follow_their_fields():
    assert SQUAD["bert_config_file"] == SQUAD["bert_model"] == ("model.bert_model", "value")
    assert PRETRAIN["num_train_steps"] == ("train.max_steps", "value")
    assert SQUAD["resume"] == ("train.resume", "optional")
