"""The vendor recipes' command lines (Cambricon MLU, Enflame GCU, Habana Gaudi, Iluvatar, Intel)
as bertforge reads them, without running them: each flag's meaning, the notes, the refusals in
one line. Paths and sizes are the recipes' own; the runs are in test_vendor_recipes.py."""

from __future__ import annotations

import logging
import shlex

import pytest
from compat_helpers import parse

from bertforge.cli import main
from bertforge.compat import alias_table, rewrite_argv
from bertforge.compat.argv import device_switch, stray_bool_value
from bertforge.compat.intel import launch_benchmark
from bertforge.errors import ConfigError, DeviceError
from bertforge.export_args import ExportArgs
from bertforge.tasks.config import PretrainRun, SquadPredictRun, SquadRun
from bertforge.train.launch import DistInfo

SQUAD = alias_table(SquadRun)
PRETRAIN = alias_table(PretrainRun)


def argv_of(line: str) -> list[str]:
    return shlex.split(line)


# ---- Cambricon: built-in/nlp/BERT/models/scripts/run_squad.sh ----------------------------------

CAMBRICON_SQUAD = ("finetune squad --init_checkpoint=ckpt/pytorch_model.pt --do_train "
                   "--train_file=squad/train-v1.1.json --train_batch_size=4 --do_predict "
                   "--predict_file=squad/dev-v1.1.json --predict_batch_size=4 --eval_script=squad/evaluate-v1.1.py "
                   "--do_eval --bert_model=bert-base-cased --learning_rate=0.00003 --seed=1 --num_train_epochs=2 "
                   "--max_seq_length=384 --doc_stride=128 --output_dir=output --vocab_file=checkpoints/squad/vocab.txt "
                   "--config_file=checkpoints/squad/bert_config.json --max_steps=-1 --eval_iters=-1 --hvd -1")


def test_cambricon_run_squad_flags():
    """--eval_iters -1 and --hvd -1 are the script's 'all batches' and 'no Horovod'; BertAdam
    has no bias correction; bert-base-cased is cased."""
    cfg = parse(argv_of(CAMBRICON_SQUAD))
    assert (cfg.train.train_batch_size, cfg.data.predict_batch_size, cfg.train.learning_rate) == (4, 4, 3e-5)
    assert cfg.model.do_lower_case is False and cfg.model.bert_model == "checkpoints/squad/bert_config.json"
    assert cfg.train.adam_bias_correction is False and cfg.train.max_steps is None


@pytest.mark.parametrize("flag,message", [
    ("--eval_iters=10", "--eval_iters=10: bertforge predicts the whole --predict_file"),
    ("--hvd 8", "--hvd=8: Horovod is not used: launch with torchrun"),
])
def test_cambricon_values_other_than_the_defaults_are_refused(flag, message):
    with pytest.raises(ConfigError, match=message):
        rewrite_argv([*argv_of(flag)], SQUAD)


def test_cambricon_pyamp_is_fp16_autocast():
    assert rewrite_argv(["--pyamp"], SQUAD).argv == ["--runtime.precision=fp16"]


# ---- Enflame: training/pytorch/nlp/BERT/scripts/run_squad_{1,8}gcu.sh --------------------------

ENFLAME_SQUAD = ("finetune squad --train_batch_size=8 --predict_batch_size=8 --num_train_epochs=2 --max_steps=-1 "
                 "--learning_rate=3.0e-05 --skip_steps=5 --print_freq=20 --do_train --do_eval --do_predict "
                 "--do_lower_case --bert_model=bert-large-uncased --max_seq_length=384 --doc_stride=128 --seed=1 "
                 "--init_checkpoint=dataset/checkpoint/DLE_BERT_FP16_PyT_LAMB_92_hard_scaling_node.pt "
                 "--train_file=dataset/squad/train-v1.1.json --predict_file=dataset/squad/dev-v1.1.json "
                 "--eval_script=dataset/squad/squad_evaluate-v1.1.py --vocab_file=vocab/vocab "
                 "--config_file=bert_config.json --output_dir=models")


def test_enflame_run_squad_flags(caplog):
    """--print_freq is the log interval, --skip_steps a throughput knob (noted)."""
    caplog.set_level(logging.WARNING)
    cfg = parse(argv_of(ENFLAME_SQUAD))
    assert cfg.train.log_every == 20 and cfg.train.train_batch_size == 8 and cfg.model.do_lower_case is True
    assert cfg.train.adam_bias_correction is False
    assert "--skip_steps: sequences/s in metrics.jsonl count every step" in caplog.text


# ---- Habana: PyTorch/nlp/bert/README.md --------------------------------------------------------

HABANA_INFERENCE = ("finetune squad --bert_model=bert-large-uncased --autocast --use_hpu_graphs "
                    "--config_file=./bert_config.json --use_habana --do_lower_case --output_dir=/tmp/results/checkpoints "
                    "--json-summary=/tmp/log_directory/dllogger.json --predict_batch_size=24 "
                    "--init_checkpoint=ckpt.pt --vocab_file=vocab.txt --do_predict --fp16 "
                    "--predict_file=data/squad/v1.1/dev-v1.1.json --do_eval --eval_script=data/squad/v1.1/evaluate-v1.1.py")


def test_habana_autocast_with_fp16_is_fp16_autocast():
    """Habana's run_squad.py: --autocast turns autocast on, --fp16 picks its dtype (bf16 alone)."""
    cfg = parse(argv_of(HABANA_INFERENCE))
    assert (cfg.runtime.precision, cfg.runtime.device, cfg.runtime.compile) == ("fp16", "hpu", True)
    assert rewrite_argv(["--autocast"], SQUAD).argv == ["--runtime.precision=bf16"]
    assert rewrite_argv(["--fp16", "--autocast"], SQUAD).argv == ["--runtime.precision=fp16"]
    with pytest.raises(ConfigError, match="--fp16 and --bf16 ask for different precisions"):
        rewrite_argv(["--fp16", "--autocast", "--bf16"], SQUAD)


def test_device_switch_is_named():
    assert device_switch(["--use_habana", "--do_train"]) == ("use_habana", "hpu")
    assert device_switch(["--use_habana", "--device", "cpu"]) is None
    assert device_switch(["--use_habana=false"]) is None


# ---- Iluvatar: nlp/language_model/bert/pytorch/train_bert_pretraining_amp_dist.sh ---------------

ILUVATAR = ("pretrain --init_checkpoint dataset/model.ckpt-28252.apex.pt --input_dir dataset/2048_shards_uncompressed "
            "--bert_config_path dataset/bert_config.json --eval_dir dataset/eval_set_uncompressed "
            "--output_dir ./results/train_log --do_train --eval_iter_start_samples 150000 --eval_iter_samples 150000 "
            "--num_eval_examples 10000 --warmup_proportion=0 --warmup_steps=0 --start_warmup_step=0 --phase2 "
            "--max_seq_length=512 --max_predictions_per_seq=76 --train_mlm_accuracy_window_size=0 "
            "--max_samples_termination=4500000 --log_freq=10 --cache_eval_data --min_samples_to_start_checkpoints 150000 "
            "--num_samples_per_checkpoint 150000 --keep_n_most_recent_checkpoints 3 --opt_lamb_beta_1=0.9 "
            "--opt_lamb_beta_2=0.999 --weight_decay_rate=0.01 --fused_gelu_bias --dense_seq_output --dwu-num-rs-pg=1 "
            "--dwu-num-ar-pg=1 --dwu-num-blocks=1 --fp16 --fused_mha --distributed_lamb --dist_backend nccl "
            "--exchange_padding --target_mlm_accuracy 0.720 --seed=17103 --skip_checkpoint --train_batch_size 52 "
            "--learning_rate=4.6e-4 --max_steps 7400 --eval_batch_size 52 --gradient_accumulation_steps=2")


def test_iluvatar_mlperf_pretraining_flags():
    """NVIDIA's MLPerf PyTorch flags: MLPerf's loop, LAMB at its betas, warmup in steps, the
    batch per optimizer step; the fused-kernel switches are notes."""
    cfg = parse(argv_of(ILUVATAR))
    assert cfg.model.bert_model == "dataset/bert_config.json" and cfg.phase2
    assert (cfg.train.train_batch_size, cfg.train.gradient_accumulation_steps) == (26, 2)
    assert cfg.train.warmup_proportion == 0.0 and cfg.train.weight_decay == 0.01 and cfg.train.keep_checkpoints == 3
    assert (cfg.data.samples_between_eval, cfg.data.stop_threshold, cfg.data.max_eval_samples) == (150000, 0.72, 10000)
    assert cfg.train.optimizer == "lamb" and cfg.train.adam_bias_correction is True  # NVIDIA's LAMB corrects
    with pytest.raises(ConfigError, match="LAMB's beta2 is 0.999"):
        rewrite_argv(["--opt_lamb_beta_2=0.98"], PRETRAIN)


def test_warmup_steps_are_a_proportion_of_the_steps():
    argv, notes = rewrite_argv(["--max_steps", "400", "--warmup_steps", "100"], PRETRAIN)
    assert argv == ["--train.max_steps", "400", "--train.warmup_proportion=0.25"]
    assert notes == ["--warmup_steps 100: warmup_proportion 0.25 of 400 steps"]


# ---- Intel: launch_benchmark.py (models/benchmarks/language_modeling/tensorflow/bert_large) ------

BERT_LARGE_DIR = "/path/to/bert/wwm_uncased_L-24_H-1024_A-16"
SQUAD_TRAINING = ("--model-name=bert_large --precision=bfloat16 --mode=training --framework=tensorflow --batch-size=24 "
                  f"-- train_option=SQuAD vocab_file={BERT_LARGE_DIR}/vocab.txt config_file={BERT_LARGE_DIR}/bert_config.json "
                  f"init_checkpoint={BERT_LARGE_DIR}/bert_model.ckpt do_train=True train_file=/s/train-v1.1.json "
                  "do_predict=True predict_file=/s/dev-v1.1.json learning_rate=3e-5 num_train_epochs=2 max_seq_length=384 "
                  "doc_stride=128 output_dir=./large do_lower_case=False")
CLASSIFIER_TRAINING = ("--model-name=bert_large --precision=bfloat16 --mode=training --framework=tensorflow --batch-size=32 "
                       "-- train-option=Classifier task-name=MRPC do-train=true do-eval=true data-dir=/glue/MRPC "
                       f"vocab-file={BERT_LARGE_DIR}/vocab.txt config-file={BERT_LARGE_DIR}/bert_config.json "
                       f"init-checkpoint={BERT_LARGE_DIR}/bert_model.ckpt max-seq-length=128 learning-rate=2e-5 "
                       "num-train-epochs=30 output-dir=/tmp/mrpc_output/ do-lower-case=False")
PRETRAINING = ("--model-name=bert_large --precision=bfloat16 --mode=training --framework=tensorflow --batch-size=32 "
               "-- train-option=Pretraining input-file=/tmp/tf_examples.tfrecord output-dir=/tmp/pretraining_output "
               f"do-train=True do-eval=True config-file={BERT_LARGE_DIR}/bert_config.json "
               f"init-checkpoint={BERT_LARGE_DIR}/bert_model.ckpt max-seq-length=128 max-predictions=20 "
               "num-train-steps=20 warmup-steps=10 learning-rate=2e-5")
INFERENCE = ("--model-name=bert_large --precision=bfloat16 --mode=inference --framework=tensorflow --batch-size=32 "
             "--data-location /home/user/uncased_L-24_H-1024_A-16 --checkpoint /home/user/bert-squad-ckpts "
             "--output-dir /home/user/bert-squad-output --docker-image intel/tensorflow-2.2-bf16")


def test_launch_benchmark_squad_training():
    translated = launch_benchmark(argv_of(SQUAD_TRAINING))
    assert translated.command[:2] == ["finetune", "squad"] and translated.processes == 1
    cfg = parse(translated.command)
    assert (cfg.train.train_batch_size, cfg.train.learning_rate, cfg.train.num_train_epochs) == (24, 3e-5, 2.0)
    assert cfg.model.bert_model == f"{BERT_LARGE_DIR}/bert_config.json" and cfg.model.do_lower_case is False
    assert (cfg.runtime.precision, cfg.output_dir, cfg.do_train, cfg.do_predict) == ("bf16", "./large", True, True)
    assert cfg.train.adam_bias_correction is False  # Intel's TensorFlow BERT is Google's: AdamWeightDecay


def test_launch_benchmark_classifier_training():
    cfg = parse(launch_benchmark(argv_of(CLASSIFIER_TRAINING)).command)
    assert (cfg.data.task_name.lower(), cfg.data.data_dir, cfg.data.max_seq_length) == ("mrpc", "/glue/MRPC", 128)
    assert (cfg.train.train_batch_size, cfg.train.num_train_epochs, cfg.do_eval) == (32, 30.0, True)


def test_launch_benchmark_pretraining_evaluates_on_the_input_as_google_does():
    """do-eval=True: Google's run_pretraining.py evaluates 100 batches of 8 of --input_file;
    max-predictions and warmup-steps are Intel's names for the per-sequence predictions and
    the warmup steps."""
    cfg = parse(launch_benchmark(argv_of(PRETRAINING)).command)
    assert cfg.do_eval and cfg.data.eval_on_train and cfg.data.max_eval_samples == 800
    assert (cfg.max_predictions_per_seq, cfg.train.max_steps, cfg.train.warmup_proportion) == (20, 20, 0.5)
    assert (cfg.train.optimizer, cfg.train.schedule_power, cfg.train.adam_bias_correction) == ("adamw", 1.0, False)
    assert cfg.model.do_lower_case is True  # the wwm_uncased release


@pytest.mark.parametrize("extra,do_eval", [("--benchmark-only", False), ("--accuracy-only", True)])
def test_launch_benchmark_inference_modes(extra, do_eval):
    translated = launch_benchmark([*argv_of(INFERENCE), extra])
    cfg = parse(translated.command)
    assert isinstance(cfg, SquadPredictRun) and cfg.do_eval is do_eval
    assert cfg.model.init_checkpoint == "/home/user/bert-squad-ckpts/model.ckpt-7299"  # Intel's default name
    assert cfg.model.vocab_file == "/home/user/uncased_L-24_H-1024_A-16/vocab.txt"
    assert cfg.data.predict_file == "/home/user/uncased_L-24_H-1024_A-16/dev-v1.1.json"
    assert cfg.model.do_lower_case is True and cfg.data.predict_batch_size == 32 and cfg.runtime.precision == "bf16"
    assert any(n.startswith("--docker-image: no container") for n in translated.notes)


def test_launch_benchmark_profile_is_a_benchmark_with_a_trace():
    translated = launch_benchmark([*argv_of(INFERENCE), "--", "profile=True"])
    cfg = parse(translated.command)
    assert (cfg.mode, cfg.task, cfg.data, cfg.profile, cfg.batch_size) == ("infer", "qa", "squad", True, 32)
    assert cfg.trace_file == "/home/user/bert-squad-output/bert_large_trace.json"


def test_launch_benchmark_mpi_is_a_torchrun_line_with_intels_learning_rate_scaling():
    """--mpi_num_processes 4: global batch 4 x 24 and, as Intel's launcher does by default, the
    learning rate scaled by sqrt(4)."""
    translated = launch_benchmark(argv_of(SQUAD_TRAINING.replace("--batch-size=24", "--batch-size=24 --mpi_num_processes=4")))
    line = translated.command_line()
    assert line.startswith("torchrun --nproc_per_node 4 --no-python bertforge finetune squad ")
    assert "--learning_rate=6e-05" in line and "--train_batch_size=24" in line
    assert any("x sqrt(4)" in n for n in translated.notes)


@pytest.mark.parametrize("argv,message", [
    (["--model-name=resnet50", "--mode=inference"], "bertforge runs BERT"),
    (["--model-name=bert_large", "--mode=inference", "--in-graph", "g.pb"], "--in-graph frozen graphs"),
    (["--model-name=bert_large", "--mode=training", "--", "train_option=NER"], "train_option=ner"),
])
def test_launch_benchmark_refusals(argv, message):
    with pytest.raises(ConfigError, match=message):
        launch_benchmark(argv)


def test_launch_benchmark_mpi_through_the_cli(capsys):
    """One line with the torchrun command; nothing runs."""
    assert main(["launch_benchmark", *argv_of(CLASSIFIER_TRAINING.replace("--batch-size=32", "--batch-size=32 "
                                                                         "--mpi_num_processes=4"))]) == 2
    err = capsys.readouterr().err
    assert "error: --mpi_num_processes 4: bertforge's processes are started by torchrun: torchrun --nproc_per_node 4 " \
           "--no-python bertforge finetune glue --task_name=MRPC" in err


# ---- Intel's --int8, for inference only ---------------------------------------------------------

def test_int8_is_for_inference():
    with pytest.raises(ConfigError, match="--int8: int8 is for inference"):
        rewrite_argv(["--int8"], SQUAD)
    assert rewrite_argv(["--int8"], alias_table(ExportArgs)).argv == ["--precision=int8"]
    predict = alias_table(SquadPredictRun)
    if "int8" in predict.choices["runtime.precision"]:
        assert rewrite_argv(["--int8"], predict).argv == ["--runtime.precision=int8"]
    else:  # predict runs int8 once its precisions include it; until then, one line saying so
        with pytest.raises(ConfigError, match="--int8: this command does not run in int8 yet"):
            rewrite_argv(["--int8"], predict)


# ---- the CLI's own spelling problems ------------------------------------------------------------

def test_a_bool_flag_given_a_word_says_what_it_takes(capsys):
    assert main(["predict", "squad", "--do_lower_case", "maybe"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("--do_lower_case takes true or false, got 'maybe'") and err.count("\n") == 1
    assert stray_bool_value(["--vocab_file", "v.txt", "maybe"], SQUAD, "maybe") is None  # not after a boolean


@pytest.mark.parametrize("argv", [["--learning_rate", "-1e-3"], ["--learning_rate=-1e-3"]])
def test_a_negative_learning_rate_reaches_the_config(argv, capsys):
    assert main(["finetune", "squad", *argv]) == 2
    assert "--learning_rate must be a positive number, got -0.001" in capsys.readouterr().err


def test_misleading_hints_are_replaced(capsys):
    assert main(["finetune", "squad", "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "--train_batch_size (training) or --predict_batch_size" in err and "--eval_batch_size?" not in err


@pytest.mark.parametrize("mode,error", [("training", None), ("inference", "pretraining trains")])
def test_intel_mode_on_a_training_command(mode, error):
    if error:
        with pytest.raises(ConfigError, match=error):
            rewrite_argv(["--mode", mode], PRETRAIN)
    else:
        assert rewrite_argv(["--mode", mode], PRETRAIN).notes == ["--mode training: this command trains (--do_train)"]


def test_google_pretraining_without_step_counts_takes_googles_defaults():
    """run_pretraining.py's defaults: 100000 steps, 10000 warmup; no message about a flag that
    was never given."""
    argv, notes = rewrite_argv(["--input_file", "d"], PRETRAIN)
    assert "--train.max_steps=100000" in argv and "--train.warmup_proportion=0.1" in argv
    assert not any("--num_warmup_steps" in n for n in notes)


def test_googles_release_names_give_the_casing():
    argv, notes = rewrite_argv(["--vocab_file", "models/multi_cased_L-12_H-768_A-12/vocab.txt"], SQUAD)
    assert argv[-1] == "--model.do_lower_case=false" and "multi_cased_L-12_H-768_A-12" in notes[0]
    argv, _ = rewrite_argv(["--init_checkpoint", "uncased_L-12_H-768_A-12/bert_model.ckpt"], SQUAD)
    assert argv[-1] == "--model.do_lower_case=true"
    assert rewrite_argv(["--vocab_file", "my_uncased_model/vocab.txt"], SQUAD).argv == [
        "--model.vocab_file", "my_uncased_model/vocab.txt"]  # not a release name: no guess


# ---- launchers' environments ---------------------------------------------------------------------

def test_mpi_environment():
    ompi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "3",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "8", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "12345"}
    info = DistInfo.from_env(ompi)
    assert (info.rank, info.local_rank, info.world_size, info.init_method) == (3, 3, 8, "tcp://10.0.0.1:12345")
    one_host = {k: v for k, v in ompi.items() if not k.startswith("MASTER")}
    assert DistInfo.from_env(one_host).init_method == "tcp://127.0.0.1:29500"
    intel_mpi = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert (DistInfo.from_env(intel_mpi).rank, DistInfo.from_env(intel_mpi).world_size) == (1, 2)
    torchrun = {**ompi, "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "16"}  # torchrun under mpirun wins
    assert DistInfo.from_env(torchrun) == DistInfo(rank=5, local_rank=1, world_size=16)
    with pytest.raises(DeviceError, match="torchrun --nnodes N --nproc_per_node M"):
        DistInfo.from_env({**one_host, "OMPI_COMM_WORLD_LOCAL_SIZE": "4"})  # two hosts, no meeting point
