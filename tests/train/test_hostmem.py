"""Host memory of CPU training: the heap trimmer gives freed memory back once the resident size
creeps past one step's need, and only then; the Trainer uses it on the CPU."""

from __future__ import annotations

import numpy as np

import bertforge.train.hostmem as hostmem
from bertforge.model import build_model
from bertforge.runconfig import RuntimeArgs, TrainArgs
from bertforge.tasks.squad import SpanLoss
from bertforge.train.batching import ArrayStepLoader, StepPlan
from bertforge.train.loop import Trainer
from bertforge.train.runtime import Runtime
from conftest import random_batch, tiny_config


class FakeProcess:
    """A resident size the test sets, and the trims asked for."""

    def __init__(self, monkeypatch):
        self.rss = 0
        self.trims = 0
        monkeypatch.setattr(hostmem, "rss_bytes", lambda key="VmRSS": self.rss)
        monkeypatch.setattr(hostmem, "trim_heap", self._trim)

    def _trim(self) -> bool:
        self.trims += 1
        return True


def test_trims_when_the_resident_size_creeps_past_the_slack(monkeypatch):
    process = FakeProcess(monkeypatch)
    trimmer = hostmem.HeapTrimmer(slack=0.1)
    for rss, trims in ((1000, 0),   # the first step: what a step needs
                       (1050, 0), (1100, 0),  # within 10%
                       (1101, 1),  # past it: given back
                       (1300, 1),  # the first step after a trim is the new reference
                       (1400, 1), (1431, 2)):
        process.rss = rss
        trimmer.after_step()
        assert process.trims == trims, rss
    assert trimmer.trims == 2


def test_without_glibc_nothing_changes(monkeypatch):
    process = FakeProcess(monkeypatch)
    monkeypatch.setattr(hostmem, "trim_heap", lambda: False)
    trimmer = hostmem.HeapTrimmer()
    for rss in (1000, 5000, 9000):
        process.rss = rss
        trimmer.after_step()
    assert trimmer.trims == 0 and trimmer.reference == 1000


def test_real_process_reads():
    assert hostmem.rss_bytes("VmRSS") > 0 and hostmem.rss_bytes("VmHWM") >= hostmem.rss_bytes("VmRSS") * 0.5
    hostmem.trim_heap()  # must not fail, glibc or not


def test_trainer_trims_on_the_cpu(monkeypatch, tmp_path):
    steps = []
    monkeypatch.setattr(hostmem.HeapTrimmer, "after_step", lambda self: steps.append(1))
    cfg = tiny_config()
    batch = {k: v.numpy() for k, v in random_batch(cfg, batch=8, seq=12).items()}
    batch["start_positions"] = np.zeros(8, dtype=np.int64)
    batch["end_positions"] = np.ones(8, dtype=np.int64)
    runtime = Runtime(RuntimeArgs(device="cpu"))
    loader = ArrayStepLoader(batch, StepPlan(4, 1, 1), rank=0, seed=0)
    trainer = Trainer(build_model(cfg, "qa", unpad=True), SpanLoss(), loader,
                      TrainArgs(max_steps=3, log_every=1), runtime, tmp_path, total_steps=3, progress=False)
    trainer.fit()
    assert len(steps) == 3
