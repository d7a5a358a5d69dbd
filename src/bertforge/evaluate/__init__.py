"""Task metrics: SQuAD's official EM/F1 (`squad`), GLUE's official metrics (`glue`)."""
