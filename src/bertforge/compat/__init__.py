"""The reference recipes' command lines, unchanged, on bertforge's commands.

`rewrite_argv(argv, alias_table(RunConfig))` returns the argv that bertforge's parser reads and
the notes to show the user; it is a pure function (no I/O, no parsing, no training):
- flat names: `--learning_rate` is `--train.learning_rate` (every field whose name is unique in
  the run config), plus the aliases in `flags.ALIASES` (`--bert_config_file`, ...);
- absl-style booleans as Google's scripts take them: `--do_train`, `--do_train=true`,
  `--nodo_lower_case`, `--no-compile`;
- the reference scripts' other flags as `flags` says: switches (`--fp16`, `--use_habana`), knobs
  accepted with a note, values refused (a ConfigError naming every one), NVIDIA's
  per-optimizer-step `--train_batch_size`, Google's pretraining optimisation,
  `--bert_model bert-large-uncased`.

Modules: `flags` (the tables: what each reference flag means here), `argv` (the flag-by-flag
pass), `values` (values whose meaning depends on the rest of the command line).
"""

from bertforge.compat.argv import AliasTable, Rewritten, alias_table, flag_table, rewrite_argv

__all__ = ["AliasTable", "Rewritten", "alias_table", "flag_table", "rewrite_argv"]
