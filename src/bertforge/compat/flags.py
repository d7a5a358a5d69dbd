"""What the flags of the reference BERT scripts mean in bertforge: the one table that
`bertforge.compat.rewrite_argv` reads when it rewrites a reference command line.

The families, and where their flag lists come from:
- Google `run_squad.py`, `run_classifier.py`, `run_pretraining.py`, `create_pretraining_data.py`
  (absl flags; `--train_batch_size` is the batch of one optimizer step, there is no accumulation);
- NVIDIA DeepLearningExamples PyTorch `run_pretraining.py`, `run_squad.py`, `run_glue.py` and
  their `scripts/*.sh`, and the ports of them to Habana Gaudi, Cambricon MLU, Enflame GCU and
  Intel CPUs: `--train_batch_size` is the batch of one *optimizer step* on one device, which the
  scripts divide by `--gradient_accumulation_steps` into micro-batches;
- NVIDIA's TensorFlow BERT as MLPerf submissions and Habana's TF port run it
  (`--input_files_dir`, `--num_accumulation_steps`, `--dllog_path`): `--train_batch_size` is the
  micro-batch, global batch = train_batch_size x num_accumulation_steps x devices, as bertforge's;
- the MLPerf reference (`language_model/tensorflow/bert/run_pretraining.py`): Google's flags plus
  `--optimizer`, `--poly_power`, `--steps_per_update`, `--start_warmup_step`, `--num_gpus`;
- NVIDIA's MLPerf PyTorch pretraining as Iluvatar's recipe runs it (`--bert_config_path`,
  `--warmup_steps`, `--opt_lamb_beta_1`, `--dense_seq_output`, ...);
- the vendor ports' own flags: Cambricon's `--eval_iters --hvd --pyamp`, Enflame's
  `--skip_steps --print_freq`, Habana's `--use_habana --autocast`, Intel's `--int8`, and the
  Hugging Face conversion script's `--tf_checkpoint_path --pytorch_dump_path`.

Every flag is in exactly one of these tables: an alias of a config field (`ALIASES`), a switch
that sets fields (`SWITCHES`), a knob accepted with a note saying what replaces it (`NOTED`), one
whose only supported value is its default (`REFUSED`), or a positional argument (`POSITIONAL`).
"""

from __future__ import annotations

# Extra names for config fields (flat name -> field name, resolved like a flat name).
ALIASES = {
    "bert_config_file": "bert_model",
    "config_file": "bert_model",
    "task": "task_name",
    "predict_batch_size": "eval_batch_size",
    "num_steps_per_checkpoint": "save_every",
    "save_checkpoints_steps": "save_every",
    "log_freq": "log_every",
    "display_loss_steps": "log_every",
    "resume_from_checkpoint": "resume",
    "output_file": "output_dir",
    "num_train_steps": "max_steps",
    "num_accumulation_steps": "gradient_accumulation_steps",
    "steps_per_update": "gradient_accumulation_steps",
    "input_files_dir": "input_dir",
    "input_file": "input_dir",
    "eval_files_dir": "eval_dir",
    "eval_iter_samples": "samples_between_eval",
    "eval_iter_start_samples": "samples_start_eval",
    "target_mlm_accuracy": "stop_threshold",
    "num_eval_examples": "max_eval_samples",
    "keep_checkpoint_max": "keep_checkpoints",
    "poly_power": "schedule_power",
    "json-summary": "json_summary",
    "dllog_path": "json_summary",
    "na-prob-file": "na_prob_file",  # evaluate-v2.0.py's spelling
    "na-prob-thresh": "na_prob_thresh",
    "print_freq": "log_every",  # Enflame's run_squad.py
    "max_predictions": "max_predictions_per_seq",  # Intel's launch_benchmark.py
    "bert_config_path": "bert_model",  # NVIDIA's MLPerf PyTorch run_pretraining.py (Iluvatar)
    "keep_n_most_recent_checkpoints": "keep_checkpoints",
    "weight_decay_rate": "weight_decay",
}

# The Hugging Face conversion script's flags, which name bertforge convert's positional
# arguments (SRC DST), in their order.
POSITIONAL = {"tf_checkpoint_path": "src", "pytorch_dump_path": "dst"}

# Switches: a bare (or true) flag sets these fields. Precision switches also must agree.
SWITCHES = {
    "fp16": {"runtime.precision": "fp16"},
    "amp": {"runtime.precision": "fp16"},
    "use_fp16": {"runtime.precision": "fp16"},
    "bf16": {"runtime.precision": "bf16"},
    "tf32": {"runtime.precision": "tf32"},
    "autocast": {"runtime.precision": "bf16"},  # Habana: autocast is bf16 on Gaudi
    "pyamp": {"runtime.precision": "fp16"},  # Cambricon: torch.cuda.amp's fp16 autocast
    "int8": {"runtime.precision": "int8", "precision": "int8"},  # Intel: int8 inference
    "use_habana": {"runtime.device": "hpu"},
    "no_cuda": {"runtime.device": "cpu"},
    "use_torch_compile": {"runtime.compile": "true"},
    "use_hpu_graphs": {"runtime.compile": "true"},
    "use-hpu-graphs": {"runtime.compile": "true"},
}

# Habana's --autocast turns autocast on, in bf16 unless another precision switch names the dtype
# (`--autocast --fp16` is fp16 autocast): it yields to them instead of contradicting them.
WEAK_SWITCHES = frozenset({"autocast"})
# Switches that only inference commands take (predict, serve, export: no do_train field).
INFERENCE_SWITCHES = {"int8": "int8 is for inference (predict, serve, export)"}

# Names of precisions as the reference scripts spell them (--precision bfloat16 ...).
PRECISION_NAMES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "fp32": "fp32",
                   "bf16": "bf16", "fp16": "fp16", "tf32": "tf32", "amp": "fp16", "mixed": "fp16"}

_DDP = "bertforge all-reduces gradients once per optimizer step (DDP no_sync), in fp32"
_COMPILE = "--compile (torch.compile of the encoder layers)"
_LAUNCH = "launch with torchrun; bertforge reads RANK/LOCAL_RANK/WORLD_SIZE"
_PRECISION = "--precision fp32|tf32|bf16|fp16"
_MEMORY = "lower --train_batch_size and raise --gradient_accumulation_steps (same global batch)"
_STREAMS = ("--streams N (CPU prediction): N forward passes at once in one process, sharing the weights, each on "
            "an equal share of the threads (set by --intra_op_parallelism_threads or OMP_NUM_THREADS)")

# Accepted with one warning naming what replaces them: knobs of one vendor's stack, TPU and
# launcher settings, logging and caching switches. None changes what is computed.
NOTED = {
    # Google / TPU / TF estimator
    "use_tpu": "no TPU support; --device picks the accelerator",
    "tpu_name": "no TPU support", "tpu_zone": "no TPU support", "gcp_project": "no TPU support",
    "master": "no TPU support", "num_tpu_cores": _LAUNCH, "iterations_per_loop": "no TPU loops",
    "eval_batch_size_tpu": "no TPU support", "save_summary_steps": "metrics.jsonl gets every --log_every step",
    "use_one_hot_embeddings": "embeddings are lookups on every device",
    "verbose_logging": "skipped questions are listed in *_problems.json",
    # NVIDIA / Habana / Cambricon / Enflame PyTorch
    "allreduce_post_accumulation": _DDP, "allreduce_post_accumulation_fp16": _DDP,
    "use_env": "bertforge always reads LOCAL_RANK from torchrun's environment",
    "disable_progress_bar": "progress bars write one line per 30 s when stderr is a file",
    "disable-progress-bar": "progress bars write one line per 30 s when stderr is a file",
    "cache_dir": "features are not cached (tokenizing is fast)",
    "skip_cache": "features are not cached (tokenizing is fast)",
    "eval_script": "predictions are scored by bertforge's built-in official SQuAD v1.1 metric "
                   "(evaluate-v1.1.py's rules, checked against it; with --version_2_with_negative, "
                   "evaluate-v2.0.py's); the script is not run",
    "loss_scale": "fp16 loss scaling is dynamic (torch.amp.GradScaler)",
    "init_loss_scale": "fp16 loss scaling is dynamic (torch.amp.GradScaler, initial scale 65536)",
    "checkpoint_activations": "no activation checkpointing; " + _MEMORY,
    "old": "one fp16 path (autocast + GradScaler)",
    "server_ip": "no remote debugging", "server_port": "no remote debugging",
    "profile": "bertforge benchmark --profile writes a torch.profiler trace",
    "profile-start": "bertforge benchmark --profile",
    "profile_steps": "bertforge benchmark --profile", "tensorboard_logdir": "metrics.jsonl",
    "enable-tensorboard-logging": "metrics.jsonl", "log_memory_usage": "bertforge benchmark reports peak memory",
    "throughput_warmup_steps": "bertforge benchmark --warmup",
    "no_dense_sequence_output": "MLM logits are computed at the masked positions only, always",
    "disable_jit_fusions": _COMPILE, "cuda_graphs": _COMPILE + "; bertforge benchmark --cuda_graphs",
    "use_fused_lamb": "bertforge's LAMB is multi-tensor (foreach) on every device",
    "use_fused_adam": "AdamW is fused on CUDA and multi-tensor elsewhere",
    "use_fused_clip_norm": "clipping is one multi-tensor norm", "per_param_grad_clipping": "clipping is global",
    "use_lazy_mode": "Habana lazy mode is PT_HPU_LAZY_MODE; bertforge runs eager or " + _COMPILE,
    "compiled_autograd": _COMPILE, "no_compiled_autograd": _COMPILE,
    "enable_packed_data_mode": "packed HDF5 is recognized by its fields and split into its sequences (--unpad "
                               "skips the padding)",
    "use_zero_optimizer": "optimizer state is replicated (DDP); " + _MEMORY,
    "hmp": _PRECISION, "hmp_bf16": _PRECISION, "hmp_fp32": _PRECISION, "hmp_opt_level": _PRECISION,
    "hmp_verbose": _PRECISION, "cnmix": _PRECISION, "opt_level": _PRECISION,
    # NVIDIA TF / MLPerf / Intel
    "use_xla": _COMPILE, "xla": _COMPILE, "horovod": _LAUNCH, "num_gpus": _LAUNCH,
    "distribution_strategy": _LAUNCH, "all_reduce_alg": _LAUNCH, "enable_scoped_allocator": _LAUNCH,
    "manual_fp16": _PRECISION, "report_loss": "the loss is in metrics.jsonl",
    "max_eval_steps": "--max_eval_samples", "ipex": _COMPILE, "jit_mode": _COMPILE, "use_jit": _COMPILE,
    "use_ort": _COMPILE, "use_share_weight": _STREAMS, "total_cores": _STREAMS, "cores_per_instance": _STREAMS,
    "perf_begin_iter": "predict reports throughput and p50/p99 latency over all batches",
    "perf_run_iters": "predict reports throughput and p50/p99 latency over all batches",
    "benchmark": "predict reports throughput and p50/p99 latency in its results and metrics.jsonl",
    "experimental_gelu": "bertforge's GELU is exact (erf); Intel's experimental GELU is the tanh approximation, "
                         "so results differ slightly from a run with experimental_gelu=True",
    "optimized_softmax": "attention is torch's SDPA",
    "mpi_workers_sync_gradients": _DDP,
    # Cambricon / Enflame
    "skip_steps": "sequences/s in metrics.jsonl count every step (bertforge benchmark --warmup leaves steps out)",
    # NVIDIA's MLPerf PyTorch (Iluvatar)
    "train_mlm_accuracy_window_size": "the training MLM accuracy is not logged; evaluations report it",
    "cache_eval_data": "the evaluation set is read once per evaluation",
    "min_samples_to_start_checkpoints": "checkpoints every --save_every steps",
    "num_samples_per_checkpoint": "checkpoints every --save_every steps",
    "dense_seq_output": "MLM logits are computed at the masked positions only, always",
    "fused_gelu_bias": _COMPILE, "fused_mha": _COMPILE, "exchange_padding": "--unpad skips the padding",
    "distributed_lamb": "optimizer state is replicated (DDP); " + _MEMORY,
    "dwu-num-rs-pg": "optimizer state is replicated (DDP)", "dwu-num-ar-pg": "optimizer state is replicated (DDP)",
    "dwu-num-blocks": "optimizer state is replicated (DDP)",
    "dist_backend": "the backend follows the device: NCCL on CUDA, gloo on CPUs",
}

# Flags whose only supported value is the reference default (value compared as a bool word or a
# number): anything else is refused with the reason.
REFUSED = {
    "resume_phase2": ("false", "resuming inside phase 2 is `--phase2 --resume_from_checkpoint` (bertforge "
                               "tells phase-1 and phase-2 checkpoints apart by --phase1_end_step)"),
    "start_warmup_step": ("0", "warmup starts at step 0"),
    "eval_iters": ("-1", "bertforge predicts the whole --predict_file (--predict_articles takes part of it)"),
    "hvd": ("-1", "Horovod is not used: " + _LAUNCH),
    "opt_lamb_beta_1": ("0.9", "LAMB's beta1 is 0.9"),
    "opt_lamb_beta_2": ("0.999", "LAMB's beta2 is 0.999"),
    # on the commands that only predict (where these are not fields)
    "do_predict": ("true", "this command always predicts"),
    "do_train": ("false", "this command does not train: bertforge finetune ... trains"),
}

# Flags that say the command line is NVIDIA's PyTorch scripts (or a port of them), whose
# --train_batch_size is per optimizer step: no other family passes any of these, and none is
# bertforge's own spelling of a field (--phase2 is both, so it is not here).
NVIDIA_MARKERS = frozenset({
    "config_file", "json-summary", "use_env", "phase1_end_step", "num_steps_per_checkpoint",
    "allreduce_post_accumulation", "allreduce_post_accumulation_fp16", "amp", "skip_checkpoint",
    "disable_progress_bar", "disable-progress-bar", "log_freq", "resume_from_checkpoint", "init_loss_scale",
    "steps_this_run", "eval_script", "use_habana", "autocast", "use_fused_lamb", "use_fused_adam",
    "use_lazy_mode", "enable_packed_data_mode", "checkpoint_activations", "resume_step",
    "no_dense_sequence_output", "disable_jit_fusions", "cuda_graphs", "cnmix", "opt_level", "hmp",
})

# Flags only Google's scripts (and the TensorFlow ports of them) pass: their fine-tuning
# optimizer is AdamWeightDecayOptimizer, Adam without bias correction.
GOOGLE_MARKERS = frozenset({"bert_config_file", "use_tpu", "tpu_name", "tpu_zone", "num_tpu_cores",
                            "iterations_per_loop", "save_checkpoints_steps", "gcp_project", "master"})

# Flags of Google's (and MLPerf's) run_pretraining.py: AdamWeightDecay with linear (power 1)
# decay over all steps after warmup measured in steps, unless --optimizer / --poly_power say otherwise.
GOOGLE_PRETRAINING_MARKERS = frozenset({"num_train_steps", "num_warmup_steps", "input_file", "input_files_dir"})
# Step counts of the pretraining scripts that become other settings: Google's warmup and
# evaluation steps, and the warmup steps of NVIDIA's MLPerf PyTorch script (no optimizer change).
PRETRAINING_STEPS = frozenset({"num_warmup_steps", "max_eval_steps", "warmup_steps"})
GOOGLE_DEFAULT_WARMUP_STEPS = 10000  # run_pretraining.py's --num_warmup_steps default
GOOGLE_DEFAULT_TRAIN_STEPS = 100000  # run_pretraining.py's --num_train_steps default
GOOGLE_EVAL_STEPS, GOOGLE_EVAL_BATCH = 100, 8  # run_pretraining.py's --max_eval_steps, --eval_batch_size

# Google's release directories (uncased_L-12_H-768_A-12, wwm_cased_L-24_H-1024_A-16, ...), whose
# name says the casing: run_squad.py's own check (validate_case_matches_checkpoint) reads it.
GOOGLE_RELEASE = r"(?:wwm_)?(uncased|cased|multi_cased|multilingual|chinese)_L-\d+_H-\d+_A-\d+"
GOOGLE_RELEASE_UNCASED = {"uncased", "multilingual", "chinese"}

# NVIDIA's --bert_model names (Hugging Face's pretrained names): architecture and casing.
MODEL_NAMES = {
    f"bert-{size}-{case}{wwm}": (size, case == "uncased")
    for size in ("base", "large") for case in ("cased", "uncased") for wwm in ("", "-whole-word-masking")
}

# Process-wide settings (torch thread pools), applied by the CLI before any work.
THREAD_FLAGS = {"intra_op_parallelism_threads": "intra", "num_intra_threads": "intra", "num-intra-threads": "intra",
                "inter_op_parallelism_threads": "inter", "num_inter_threads": "inter", "num-inter-threads": "inter"}

# `--mode` of Intel's launchers on commands that have no mode: what each means here; "training"
# and "inference" must match what the command does.
INTEL_MODES = {
    "benchmark": "predict reports throughput and p50/p99 latency in its results and metrics.jsonl",
    "accuracy": "predictions are scored with the official metric when the file has answers",
    "profile": "bertforge benchmark --profile writes a torch.profiler trace",
    "inference": "this command predicts",
    "training": "this command trains (--do_train)",
}

# Unknown flags a "did you mean" would answer wrongly: what they stand for here.
HINTS = {
    "batch_size": "--train_batch_size (training) or --predict_batch_size / --eval_batch_size (prediction)",
    "batch-size": "--train_batch_size (training) or --predict_batch_size / --eval_batch_size (prediction)",
}

# Environment variables of the vendor stacks that bertforge does not read, and what does their job.
VENDOR_ENVIRONMENT = {
    "ENFLAME_ENABLE_TF32": "Enflame's TF32 switch is not read: --precision tf32 gives TF32 matmuls",
}
