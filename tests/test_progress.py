"""Progress outside a terminal (pytest captures stdout and stderr: no terminal): no progress
bar, a training run's line per epoch, a sweep's status line now and then."""

from __future__ import annotations

import pytest

from mup2.config import parse_config
from mup2.progress import StatusLine, progress_bar
from mup2.train import train

TRAIN = {
    "epochs": 2,
    "batch_size": 16,
    "model": {"name": "mlp", "width": 16, "base_width": 16},
    "data": {"name": "synthetic", "train_size": 64, "test_size": 32},
    "optimizer": {"name": "sgd", "lr": 0.1},
}


def test_training_shows_a_line_per_epoch_and_no_bar(capsys: pytest.CaptureFixture[str]) -> None:
    train(parse_config(TRAIN | {"progress": True}))
    out, err = capsys.readouterr()
    assert [line.split()[:2] for line in out.splitlines()] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert err == ""  # a bar would redraw itself here, with carriage returns


def test_a_bar_is_shown_only_when_enabled_and_in_a_terminal() -> None:
    assert progress_bar(range(3), enabled=True).disable  # stderr is captured: no terminal
    assert progress_bar(range(3), enabled=False).disable


def test_a_status_line_at_most_every_so_often(capsys: pytest.CaptureFixture[str]) -> None:
    often = StatusLine(active=True, seconds=0.0)
    for line in ("1/4 done", "1/4 done", "2/4 done"):
        often.show(line)
    rarely = StatusLine(active=True, seconds=3600.0)
    for line in ("a: 1/4 done", "a: 2/4 done"):
        rarely.show(line)
    StatusLine(active=False).show("not shown")
    assert capsys.readouterr().err.splitlines() == ["1/4 done", "2/4 done", "a: 1/4 done"]
