"""`bertforge plot`: a PNG of the runs' curves, one panel per quantity, runs overlaid."""

from __future__ import annotations

import json

import pytest

from bertforge.cli import main
from bertforge.errors import ConfigError
from bertforge.plot import plot_runs, read_run

pytest.importorskip("matplotlib")


def write_metrics(run, records):
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def squad_like(run, losses, resume_at=None):
    records = []
    for step, loss in enumerate(losses, 1):
        records.append({"step": step, "loss": loss, "lr": 1e-4 * step, "seq_per_s": 100.0 + step, "epoch": 0.1})
        if step % 2 == 0:
            records.append({"step": step, "split": "eval", "exact_match": 10.0 * step, "f1": 12.0 * step})
    if resume_at:  # a resumed run logs the steps after its checkpoint again, after a resume event
        records.append({"event": "resume", "step": resume_at, "checkpoint": "x"})
        records += [{"step": s, "loss": losses[s - 1] - 0.5, "lr": 1e-4 * s, "seq_per_s": 1.0}
                    for s in range(resume_at + 1, len(losses) + 1)]
    return write_metrics(run, records)


def test_plot_writes_a_png_with_a_panel_per_quantity(tmp_path):
    a = squad_like(tmp_path / "a", [5.0, 4.0, 3.5, 3.0])
    b = squad_like(tmp_path / "b", [5.5, 4.5, 4.0, 3.9, 3.8, 3.7], resume_at=4)
    out = tmp_path / "plots" / "curves.png"
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1500, 720)  # 3 columns x 2 rows of panels
    fig = plot_runs([read_run(a), read_run(b)], tmp_path / "again.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["training loss", "learning rate", "throughput (sequences/s)", "eval exact_match", "eval f1"]
    loss_a, loss_b = fig.axes[0].get_lines()
    assert list(loss_a.get_ydata()) == [5.0, 4.0, 3.5, 3.0]
    # b's steps 5-6 as the resumed run logged them (the later record of a step wins)
    assert list(loss_b.get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(loss_b.get_ydata()) == [5.5, 4.5, 4.0, 3.9, 3.3, 3.2]
    f1_a, _ = fig.axes[4].get_lines()
    assert list(f1_a.get_xdata()) == [2, 4] and list(f1_a.get_ydata()) == [24.0, 48.0]


def test_a_training_only_run_has_three_panels(tmp_path):
    run = write_metrics(tmp_path / "pre", [{"step": s, "loss": 1.0 / s, "lr": 0.1, "seq_per_s": 5.0}
                                           for s in range(1, 4)])
    fig = plot_runs([read_run(run)], tmp_path / "c.png")
    assert len(fig.axes) == 3


def test_plot_errors_name_the_file_and_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope"), "--out", str(tmp_path / "c.png")]) == 2
    assert f"no metrics.jsonl at {tmp_path / 'nope' / 'metrics.jsonl'}" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss"\n')
    assert main(["plot", str(bad), "--out", str(tmp_path / "c.png")]) == 2
    assert f"{bad / 'metrics.jsonl'}:2: not a JSON record" in capsys.readouterr().err
    ok = squad_like(tmp_path / "ok", [1.0, 0.5])
    assert main(["plot", str(ok), "--out", str(tmp_path / "c.jpg")]) == 2
    assert "name the file *.png" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    import sys

    run = squad_like(tmp_path / "a", [1.0, 0.5])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"bertforge\[plot\]"):
        plot_runs([read_run(run)], tmp_path / "c.png")
