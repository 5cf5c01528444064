"""Every bad input we know of ends in ``error: ...`` (one or two lines naming the input and the
fix), exit code 2, no traceback and nothing written. ``python tests/test_errors.py`` prints the
table of docs/errors.md from these cases."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import py_compile
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import yaml
from typer.testing import CliRunner

import mup2
import mup2.sweep
from mup2.batched import train_batched
from mup2.cli import app
from mup2.config import TrainConfig, parse_config
from mup2.coordcheck import coord_check, table1
from mup2.optim import LatePhase
from mup2.sweep import parse_sweep_config, prepare
from mup2.train import CHECKPOINT
from mup2.train import train as train_run

from nets import DictBlocks, ListBlocks, mlp

TRAIN: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 16,
    "progress": False,
    "model": {"name": "mlp", "width": 16, "base_width": 16},
    "data": {"name": "synthetic", "train_size": 64, "test_size": 32},
    "optimizer": {"name": "sgd", "lr": 0.1},
}
GRID = {"widths": [16], "lr": [0.1], "rho": [0.0, 0.05], "parametrizations": ["mup2"]}
CLOSED_PORT = "postgresql+psycopg2://mup2@127.0.0.1:9/none"  # the discard port: refused


@dataclass(frozen=True)
class Case:
    group: str
    what: str
    argv: Callable[[Path], list[str]]  # makes the inputs in a fresh directory; the command
    message: str  # a regular expression the message must match


def _yaml(d: Path, data: dict[str, Any], name: str = "c.yaml") -> str:
    (d / name).write_text(yaml.safe_dump(data))
    return str(d / name)


def _train(d: Path, **change: Any) -> list[str]:
    """``mup2 train`` of TRAIN with sections replaced by ``change``."""
    return ["train", _yaml(d, TRAIN | change), "--run-dir", str(d / "run")]


def _with(section: str, **keys: Any) -> dict[str, Any]:
    return {section: TRAIN[section] | keys}


def _idx(arr: np.ndarray[Any, Any]) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _mnist(d: Path, damage: Callable[[Path], None] | None = None, n: int = 64) -> list[str]:
    """``mup2 train`` on four IDX files in ``d/data`` (``damage`` applied to them first)."""
    root = d / "data"
    root.mkdir()
    for prefix in ("train", "t10k"):
        images = np.arange(n * 8 * 8).reshape(n, 8, 8) % 256
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(np.arange(n) % 10))
    if damage is not None:
        damage(root)
    data = {"name": "idx", "root": str(root)}
    return _train(d, data=data)


def _rewrite(name: str, edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / name
        path.write_bytes(edit(path.read_bytes()))

    return apply


def _swap(root: Path) -> None:
    a, b = root / "train-images-idx3-ubyte", root / "train-labels-idx1-ubyte"
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)


def _gzip_cut(root: Path) -> None:
    path = root / "train-images-idx3-ubyte"
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(path.read_bytes())[:-20])
    path.unlink()


def _checkpoint(d: Path, damage: Callable[[Path], None]) -> list[str]:
    """``mup2 train`` resuming a run whose checkpoint ``damage`` changed."""
    argv = _train(d)
    train_run(parse_config(TRAIN), d / "run")
    damage(d / "run" / CHECKPOINT)
    return argv


def _tensor_bytes(path: Path) -> tuple[int, int]:
    """Offset and size of the largest tensor's bytes inside a torch zip file."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with path.open("rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _flip_bytes(path: Path) -> None:
    start, size = _tensor_bytes(path)
    raw = bytearray(path.read_bytes())
    for i in range(start + size // 2, start + size // 2 + 64):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _flip_low_bits(path: Path) -> None:
    start, _ = _tensor_bytes(path)
    raw = bytearray(path.read_bytes())
    for k in range(16):  # little-endian float32: the first byte holds the lowest mantissa bit
        raw[start + 4 * k] ^= 0x01
    path.write_bytes(bytes(raw))


def _store(d: Path) -> str:
    url = f"sqlite:///{d / 'sweep.db'}"
    prepare(parse_sweep_config({"name": "s", "train": TRAIN, "grid": GRID}), url)
    return url


def _sweep(d: Path, **change: Any) -> list[str]:
    cfg = {"name": "s", "train": TRAIN, "grid": GRID} | change
    return ["sweep", _yaml(d, cfg), "--run-dir", str(d / "run")]


#: A user's objective file for the user sweep cases (compiled first: importing it then writes
#: nothing).
OBJECTIVE = "def objective(point, report):\n    return 0.5\n\n\ndef one(point):\n    return 0.5\n"


def _user(d: Path, objective: str = "obj.py:objective", **change: Any) -> dict[str, Any]:
    """A user sweep config mapping (``obj.py`` written into ``d``); ``change`` updates
    ``train``."""
    (d / "obj.py").write_text(OBJECTIVE)
    py_compile.compile(str(d / "obj.py"))
    train = {"objective": objective, "direction": "maximize", "version": "v1"} | change
    return {"name": "s", "train": train, "grid": GRID}


def _user_sweep(
    d: Path, objective: str = "obj.py:objective", storage: str | None = None, **change: Any
) -> list[str]:
    """``mup2 sweep`` of :func:`_user`'s config (with ``storage``, if given)."""
    cfg = _user(d, objective, **change) | ({"storage": storage} if storage else {})
    return ["sweep", _yaml(d, cfg), "--run-dir", str(d / "run")]


def _user_store(d: Path, objective: str) -> str:
    """A store holding the user sweep ``s`` of ``objective`` (not checked: a worker will)."""
    url = f"sqlite:///{d / 'sweep.db'}"
    prepare(parse_sweep_config(_user(d, objective)), url)
    return url


def _file(d: Path, name: str = "file", text: str = "x") -> Path:
    (d / name).write_text(text)
    return d / name


def _worker(storage: str, *more: str) -> list[str]:
    return ["worker", "--storage", storage, "--study", "s", *more]


def _report(storage: str, out: Path) -> list[str]:
    return ["report", "--storage", storage, "--study", "s", "--out", str(out)]


def _one_label_less(raw: bytes) -> bytes:
    return raw[:4] + struct.pack(">i", struct.unpack(">i", raw[4:8])[0] - 1) + raw[8:-1]


def _latin1(d: Path) -> str:
    (d / "c.toml").write_bytes("epochs = 1 # café\n".encode("latin-1"))
    return str(d / "c.toml")


CC = ["coordcheck", "--widths", "8,16,32", "--seeds", "1", "--steps", "1"]
INF, NAN = math.inf, math.nan

CASES = [
    # -- stores ---------------------------------------------------------------------------
    Case("store", "`--storage notaurl`", lambda d: _worker("notaurl"), "not a database URL"),
    Case("store", "`--storage foo://host/db`", lambda d: _worker("foo://h/db"), "not a database"),
    Case("store", "unreachable PostgreSQL", lambda d: _worker(CLOSED_PORT), "server runs"),
    Case(
        "store",
        "`worker --storage sqlite:///missing.db` (not created)",
        lambda d: _worker(f"sqlite:///{d / 'missing.db'}"),
        "no sweep store at .*missing.db",
    ),
    Case(
        "store",
        "`report` on a missing SQLite file",
        lambda d: _report(f"sqlite:///{d}/no.db", d / "out"),
        "no sweep store at",
    ),
    Case(
        "store",
        "a file that is not a database",
        lambda d: _worker(f"sqlite:///{_file(d, 'text.db')}"),
        "not an SQLite database",
    ),
    Case(
        "store",
        "`worker --study nope`",
        lambda d: ["worker", "--storage", _store(d), "--study", "nope"],
        r"no sweep 'nope' .*studies there: 's'",
    ),
    Case("store", "sweep config `storage = 'nonsense'`", lambda d: _sweep(d, storage="x"), "URL"),
    Case(
        "store",
        "sweep config `storage` in a missing directory (without `--mkdir`)",
        lambda d: _sweep(d, storage=f"sqlite:///{d}/typo/sweep.db"),
        r"no directory .*/typo for the store .*: to start a new sweep there, make it "
        r"\(`mup2 sweep CONFIG --mkdir`\); to resume one, check the path",
    ),
    Case(
        "store",
        "a sweep's name reused with another training config",
        lambda d: _sweep(d, storage=_store(d), train=TRAIN | {"epochs": 2, "seed": 3}),
        r"study 's' in .* was made by a different sweep config: train\.epochs: 1 in the store, "
        r"2 here; train\.seed: 0 in the store, 3 here\. Only the grid may grow",
    ),
    Case(
        "store",
        "a user sweep's name reused with another `version`",
        lambda d: _user_sweep(d, storage=_user_store(d, "obj.py:objective"), version="v2"),
        r"study 's' in .* was made by a different sweep config: train\.version: \"v1\" in the "
        r"store, \"v2\" here\. Only the grid may grow",
    ),
    # -- data -----------------------------------------------------------------------------
    Case(
        "data",
        "IDX file with a bad magic number",
        lambda d: _mnist(d, _rewrite("train-images-idx3-ubyte", lambda b: b"\1\2" + b[2:])),
        "is not an IDX file",
    ),
    Case(
        "data",
        "truncated IDX file",
        lambda d: _mnist(d, _rewrite("t10k-images-idx3-ubyte", lambda b: b[:-7])),
        "header says .*truncated",
    ),
    Case("data", "truncated gzip file", lambda d: _mnist(d, _gzip_cut), "damaged or truncated"),
    Case(
        "data",
        "labels outside `num_classes`",
        lambda d: _mnist(d, _rewrite("train-labels-idx1-ubyte", lambda b: b[:-1] + b"\x63")),
        "labels span 0..99, outside 0..9",
    ),
    Case("data", "images and labels swapped", lambda d: _mnist(d, _swap), "not uint8 images"),
    Case(
        "data",
        "fewer labels than images",
        lambda d: _mnist(d, _rewrite("t10k-labels-idx1-ubyte", _one_label_less)),
        "not one label per each of the 64 images",
    ),
    Case(
        "data",
        "IDX files missing",
        lambda d: _mnist(d, lambda r: (r / "t10k-labels-idx1-ubyte").unlink()),
        "no t10k-labels-idx1-ubyte",
    ),
    Case(
        "data",
        "sweep on a missing dataset",
        lambda d: _sweep(d, train=TRAIN | {"data": {"name": "fashion-mnist", "root": str(d)}}),
        "Fashion-MNIST not found",
    ),
    # -- paths ----------------------------------------------------------------------------
    Case(
        "path",
        "`train --run-dir` under a file",
        lambda d: [*_train(d)[:2], "--run-dir", str(_file(d) / "run")],
        "--run-dir .* cannot be made: .* is a file",
    ),
    Case(
        "path",
        "`sweep --run-dir` under a file",
        lambda d: [*_sweep(d)[:2], "--run-dir", str(_file(d) / "run")],
        "--run-dir .* cannot be made",
    ),
    Case(
        "path",
        "`report --out` under a file",
        lambda d: _report(_store(d), _file(d) / "out"),
        "--out .* cannot be made",
    ),
    Case("path", "`coordcheck --json` a directory", lambda d: [*CC, "--json", str(d)], "is a dir"),
    Case(
        "path",
        "`coordcheck --plot` under a file",
        lambda d: [*CC, "--plot", str(_file(d) / "cc.png")],
        "--plot .* cannot be made",
    ),
    Case("path", "`demo --out` a file", lambda d: ["demo", "--out", str(_file(d))], "is a file"),
    Case(
        "path",
        "a full disk (`--json /dev/full`)",
        lambda d: [*CC, "--json", "/dev/full"],
        "/dev/full: No space left on device: the disk is full; free some space",
    ),
    # -- checkpoints ----------------------------------------------------------------------
    Case(
        "checkpoint",
        "empty checkpoint",
        lambda d: _checkpoint(d, lambda p: p.write_bytes(b"")),
        "not a readable checkpoint",
    ),
    Case(
        "checkpoint",
        "truncated checkpoint",
        lambda d: _checkpoint(d, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
        "not a readable checkpoint",
    ),
    Case(
        "checkpoint",
        "a text file as checkpoint",
        lambda d: _checkpoint(d, lambda p: p.write_text("hello")),
        "not a readable checkpoint",
    ),
    Case(
        "checkpoint",
        "another program's torch file",
        lambda d: _checkpoint(d, lambda p: torch.save({"weight": torch.zeros(2)}, p)),
        r"not a mup2 checkpoint \(it lacks \['config'",
    ),
    Case(
        "checkpoint",
        "64 bytes flipped inside a tensor",
        lambda d: _checkpoint(d, _flip_bytes),
        "the checkpoint is damaged .*; delete .* to start the run over",
    ),
    Case(
        "checkpoint",
        "the low bit of 16 floats flipped",
        lambda d: _checkpoint(d, _flip_low_bits),
        "the checkpoint is damaged",
    ),
    # -- configs --------------------------------------------------------------------------
    Case(
        "config",
        "a config that is not UTF-8",
        lambda d: ["train", _latin1(d), "--run-dir", str(d / "run")],
        "not a UTF-8 text file",
    ),
    Case(
        "config",
        "a missing config file",
        lambda d: ["train", str(d / "none.toml")],
        "none.toml: No such file or directory: check the path",
    ),
    Case(
        "config",
        "`device = 'cuda'` without a GPU",
        lambda d: _train(d, device="cuda"),
        "device: 'cuda', but this machine has no CUDA GPUs; set device = 'cpu' or 'auto'",
    ),
    Case(
        "config",
        "`batch_size` larger than `train_size`",
        lambda d: _train(d, batch_size=512),
        "batch_size: 512 is more than data.train_size = 64",
    ),
    Case(
        "config",
        "`batch_size` larger than the dataset",
        lambda d: _mnist(d, n=8),
        "batch_size: 16 is more than the 8 training examples",
    ),
    Case("config", "`lr = inf`", lambda d: _train(d, **_with("optimizer", lr=INF)), "lr: .*finite"),
    Case("config", "`rho = inf`", lambda d: _train(d, sam={"rho": INF}), "sam.rho: .*finite"),
    Case(
        "config",
        "`sam.rule = 'msam'` with SGD `momentum = 0`",
        lambda d: _train(d, sam={"rule": "msam", "rho": 0.3}, **_with("optimizer", momentum=0.0)),
        "sam.rule: 'msam' perturbs along the optimizer's momentum",
    ),
    Case(
        "config",
        "`sam.rule = 'rwp'` with `every = 2`",
        lambda d: _train(d, sam={"rule": "rwp", "rho": 0.01, "every": 2}),
        "sam.every: 'rwp' is one-pass",
    ),
    Case(
        "config",
        "`weight_decay = inf`",
        lambda d: _train(d, **_with("optimizer", weight_decay=INF)),
        "weight_decay: .*finite",
    ),
    Case("config", "data `noise = inf`", lambda d: _train(d, **_with("data", noise=INF)), "noise"),
    Case(
        "config",
        "`label_noise = nan`",
        lambda d: _train(d, **_with("data", label_noise=NAN)),
        "data.label_noise: .*finite",
    ),
    Case(
        "config",
        "`loss = 'mae'`",
        lambda d: _train(d, loss="mae"),
        "loss: Input should be 'cross-entropy' or 'mse'",
    ),
    Case(
        "config",
        "`sam.schedule = 'late:1.5'`",
        lambda d: _train(d, sam={"rho": 0.1, "schedule": "late:1.5"}),
        "sam.schedule: 'late:1.5' is not a ρ schedule",
    ),
    Case(
        "config",
        "`sam.between = 'looksam'` with `every = 1`",
        lambda d: _train(d, sam={"rho": 0.1, "between": "looksam"}),
        "sam.between: 'looksam' reuses a SAM step's gradient",
    ),
    Case(
        "config",
        "`sam.alpha` without `between = 'looksam'`",
        lambda d: _train(d, sam={"rho": 0.1, "every": 2, "alpha": 0.5}),
        "sam.alpha: LookSAM's, set only with sam.between = 'looksam'",
    ),
    Case(
        "config",
        "LookSAM with `precision = 'fp16'`",
        lambda d: _train(d, sam={"every": 2, "between": "looksam"}, precision="fp16"),
        "sam.between: LookSAM keeps a gradient across steps and takes no gradient scaler",
    ),
    Case(
        "config",
        "`inf` in a grid",
        lambda d: _sweep(d, grid=GRID | {"rho": [0.0, INF]}),
        "grid.rho.1: .*finite",
    ),
    Case(
        "config",
        "`unstable_below = nan`",
        lambda d: _sweep(d, unstable_below=NAN),
        "unstable_below: .*finite",
    ),
    # -- user objectives ------------------------------------------------------------------
    Case(
        "objective",
        "`objective = 'no_such_pkg.train:objective'` (no such module)",
        lambda d: _user_sweep(d, "no_such_pkg.train:objective"),
        r"objective 'no_such_pkg.train:objective': no module named 'no_such_pkg'; install its "
        r"package in this environment, run from the folder that holds it, or name the file",
    ),
    Case(
        "objective",
        "`objective = 'DIR/gone.py:objective'` (no such file)",
        lambda d: _user_sweep(d, f"{d}/gone.py:objective"),
        r"objective '.*/gone.py:objective': no file .*/gone.py; check the path",
    ),
    Case(
        "objective",
        "`objective = 'obj.py:objectiv'` (no such function)",
        lambda d: _user_sweep(d, "obj.py:objectiv"),
        r"objective 'obj.py:objectiv': obj.py has no 'objectiv'; did you mean 'objective'",
    ),
    Case(
        "objective",
        "`objective = 'obj.py:one'`, a function `one(point)`",
        lambda d: _user_sweep(d, "obj.py:one"),
        r"objective 'obj.py:one' takes \(point\), but a sweep calls it as "
        r"objective\(point, report\); define it as def objective\(point, report\)",
    ),
    Case(
        "objective",
        "`worker` on a user sweep whose objective file is not on this machine",
        lambda d: _worker(_user_store(d, f"{d}/gone.py:objective")),
        r"objective '.*/gone.py:objective': no file .*/gone.py",
    ),
    Case(
        "objective",
        "`objective = 'obj.py'` (no function)",
        lambda d: _user_sweep(d, "obj.py"),
        r"train.objective: 'obj.py' is not an entry point; write 'package.module:function' or "
        r"'<path>.py:function'",
    ),
    Case(
        "objective",
        "a user sweep without `version`",
        lambda d: [
            "sweep",
            _yaml(d, _user(d) | {"train": {"objective": "o:f", "direction": "minimize"}}),
        ],
        r"train.version: Field required",
    ),
    Case(
        "objective",
        "a user sweep with `batch = 2`",
        lambda d: ["sweep", _yaml(d, _user(d) | {"batch": 2})],
        r"batch: 2, but a sweep of a user objective trains one grid point at a time \(bundles "
        r"are for mup2's own training\); set batch = 1",
    ),
    Case(
        "objective",
        "`sweep --batch 4` of a user sweep",
        lambda d: [*_user_sweep(d), "--batch", "4"],
        r"sweep 's' runs a user objective \(obj.py:objective\), which trains one grid point "
        r"at a time: batch = 4 is for mup2's own training; use batch = 1",
    ),
    # -- options --------------------------------------------------------------------------
    Case("option", "`worker --threads 0`", lambda d: _worker("x", "--threads", "0"), "--threads"),
    Case(
        "option",
        "`worker --max-trials 0`",
        lambda d: _worker("x", "--max-trials", "0"),
        "'--max-trials': Input should be greater than or equal to 1",
    ),
    Case("option", "`sweep --workers -1`", lambda d: [*_sweep(d), "--workers", "-1"], "--workers"),
    Case(
        "option",
        "`roles --scheme foo`",
        lambda d: ["roles", "--scheme", "foo"],
        "'foo' is not one of sp, mup-sgd, mup-adam",
    ),
    Case("option", "`roles --width 0`", lambda d: ["roles", "--width", "0"], "--width"),
    Case(
        "option",
        "`coordcheck --batch-size 0`",
        lambda d: [*CC, "--batch-size", "0"],
        "--batch-size",
    ),
    Case("option", "`coordcheck --lr -1`", lambda d: [*CC, "--lr", "-1"], "-1 must be > 0"),
    Case("option", "`coordcheck --rho inf`", lambda d: [*CC, "--rho", "inf"], "not a finite"),
    Case(
        "option",
        "`coordcheck --widths 64,x`",
        lambda d: ["coordcheck", "--widths", "64,x"],
        "--widths must be comma-separated integers",
    ),
    Case(
        "option",
        "`coordcheck --widths 64,128`",
        lambda d: ["coordcheck", "--widths", "64,128"],
        "at least 3 widths",
    ),
    Case(
        "option",
        "`report --unstable-below nan`",
        lambda d: ["report", "--storage", "x", "--study", "s", "--unstable-below", "nan"],
        "'nan' is not a finite number",
    ),
    Case(
        "option",
        "`report --unstable-below 2` (an accuracy)",
        lambda d: [*_report(_store(d), d / "out"), "--unstable-below", "2"],
        r"unstable_below 2 is not in \[0, 1\]: test_accuracy is a fraction",
    ),
    Case(
        "option",
        "`report --unstable-above 0.5` (a maximized metric)",
        lambda d: [*_report(_store(d), d / "out"), "--unstable-above", "0.5"],
        "the sweep maximizes test_accuracy: a run is unstable below a threshold",
    ),
]


def _files(d: Path) -> dict[str, tuple[int, str]]:
    """What is under ``d``: size and content hash (SQLite's own -wal/-shm files aside, made by
    any reader; a reader's checkpoint may touch the store's mtime without changing a byte)."""
    return {
        str(p.relative_to(d)): (
            (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            if p.is_file()
            else (0, "a folder")
        )
        for p in d.rglob("*")
        if not p.name.endswith(("-wal", "-shm"))
    }


def invoke(case: Case, d: Path) -> tuple[int, str]:
    """Run ``case`` in ``d``: its exit code and message (after checking nothing was written)."""
    argv = case.argv(d)
    before = _files(d)
    res = CliRunner().invoke(app, argv)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert _files(d) == before, "the command wrote files"
    return res.exit_code, res.stderr.strip()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_gets_a_short_message_and_exit_code_2(case: Case, tmp_path: Path) -> None:
    if "cuda" in case.what and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, message = invoke(case, tmp_path)
    assert code == 2, message
    assert message.startswith("error: ") and len(message.splitlines()) <= 2, message
    assert "Traceback" not in message and re.search(case.message, message), message


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["--debug", "worker", "--storage", "notaurl", "--study", "s"])
    assert res.exit_code != 2 and isinstance(res.exception, mup2.sweep.StoreError)


def test_a_full_disk_under_a_worker_gets_a_message(tmp_path: Path) -> None:
    """The store's file may not grow (RLIMIT_FSIZE, as on a full disk): the worker stops with a
    message, not Optuna's ``AssertionError``."""
    url = _store(tmp_path)
    limit = (tmp_path / "sweep.db").stat().st_size + 8192

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "mup2.cli", *_worker(url)]
    res = subprocess.run(cmd, preexec_fn=small_files, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert re.search(r"error: store .*sweep\.db: disk I/O error; free some disk space", res.stderr)


def _sgd_group(lr: float) -> list[dict[str, Any]]:
    return [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr}]


OPTIMIZERS = [
    ("`SAM(lr=nan)`", lambda p: mup2.SAM(p, lr=NAN), "lr must be finite, got nan"),
    ("`SAM(rho=inf)`", lambda p: mup2.SAM(p, lr=0.1, rho=INF), "rho must be finite"),
    ("`SAM(eta=nan)`", lambda p: mup2.SAM(p, lr=0.1, eta=NAN), "eta must be finite"),
    (
        "`SAM(weight_decay=inf)`",
        lambda p: mup2.SAM(p, lr=0.1, weight_decay=INF),
        "weight_decay must be finite",
    ),
    ("a param group with `lr=nan`", lambda p: mup2.SAM(_sgd_group(NAN)), "group 0: lr must"),
    ("`LightSAM(lr=inf)`", lambda p: mup2.LightSAM(p, lr=INF), "lr must be finite"),
    (
        "`LightSAM(betas=(0.9, nan))`",
        lambda p: mup2.LightSAM(p, betas=(0.9, NAN)),
        "betas must be finite",
    ),
    ("`AdaGradNorm(lr=inf)`", lambda p: mup2.AdaGradNorm(p, lr=INF), "lr must be finite"),
    (
        "`MuonAdamW` with a Muon group of vectors",
        lambda p: mup2.optim.MuonAdamW([{"params": p, "muon": True}]),
        "Muon orthogonalizes matrices (2-D)",
    ),
    (
        "`SAM(params, rule='sam-readout')` on plain params",
        lambda p: mup2.SAM(p, lr=0.1, rule="sam-readout"),
        "rule 'sam-readout' perturbs tensors by their role",
    ),
    ("`SAM(every=0)`", lambda p: mup2.SAM(p, lr=0.1, every=0), "every must be >= 1"),
    (
        "`SAM(between='lookahead')`",
        lambda p: mup2.SAM(p, lr=0.1, between="lookahead"),
        "between must be one of ['sgd', 'looksam'], not 'lookahead'",
    ),
    (
        "`LatePhase(opt, 100, fraction=1.5)`",
        lambda p: LatePhase(mup2.SAM(p, lr=0.1), 100, 1.5),
        "fraction must be in (0, 1], got 1.5",
    ),
]


@pytest.mark.parametrize(("what", "make", "message"), OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_optimizers_refuse_non_finite_arguments(what: str, make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make([torch.nn.Parameter(torch.zeros(2))])


PARAMETRIZATIONS = [
    (
        "a base with other input features (784 vs 12)",
        lambda: mup2.Parametrization.infer(mlp(64), mlp(16, d_in=784), "mup-sgd"),
        "one grows and the other shrinks",
    ),
    (
        "a base with a tensor of another rank",
        lambda: mup2.Parametrization.infer(mlp(64), {"0.weight": (16, 12, 1)}, "mup-sgd"),
        "has 2 dims but the base's is [16, 12, 1]",
    ),
    (
        "a base with a tensor the model lacks",
        lambda: mup2.Parametrization.infer(mlp(64), {"head.weight": (5, 16)}, "mup-sgd"),
        "the base has tensors the model lacks: ['head.weight']",
    ),
    (
        "an unknown scheme",
        lambda: mup2.Parametrization.infer(mlp(64), mlp(16), "mup3"),
        "unknown scheme 'mup3'",
    ),
    (
        "a shallower base whose blocks are in an `nn.ModuleDict`",
        lambda: mup2.Parametrization.infer(DictBlocks(32, 4), DictBlocks(16, 2)),
        "the model and the base differ in depth",
    ),
    (
        "a shallower base, blocks with no known branch output",
        lambda: mup2.Parametrization.infer(ListBlocks(32, 4), ListBlocks(16, 2)),
        "have none of the residual branch outputs mup2 knows",
    ),
]


@pytest.mark.parametrize(
    ("what", "make", "message"), PARAMETRIZATIONS, ids=[p[0] for p in PARAMETRIZATIONS]
)
def test_parametrizations_refuse_a_base_that_does_not_match(
    what: str, make: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2))]


def _used_up() -> Any:
    """``model.parameters()`` after another optimizer read it."""
    params = mlp(16).parameters()
    mup2.SAM(params, lr=0.1)
    return params


def _p() -> mup2.Parametrization:
    return mup2.Parametrization.infer(mlp(64), mlp(16))


def _infer(**kwargs: Any) -> mup2.Parametrization:
    return mup2.Parametrization.infer(mlp(64), mlp(16), **kwargs)


X, Y = torch.randn(8, 12), torch.randint(0, 5, (8,))


def _cc(factory: Any = mlp, widths: Any = (16, 32, 64), **kwargs: Any) -> Any:
    return coord_check(factory, widths, kwargs.pop("inputs", X), Y, **kwargs)


def _sweep_cfg() -> mup2.sweep.SweepConfig:
    return parse_sweep_config({"name": "s", "train": TRAIN, "grid": GRID})


#: Wrong arguments of the library's public functions and constructors: (what, call,
#: exception type, message).
ARGUMENTS: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    (
        "`SAM(params, 'sgd')`",
        lambda: mup2.SAM(_params(), "sgd", lr=0.1),  # type: ignore[arg-type]
        TypeError,
        "base_optimizer must be a torch optimizer class, got the string 'sgd'; pass the class, "
        "and its arguments as keywords: SAM(params, torch.optim.SGD, lr=0.1, momentum=0.9)",
    ),
    (
        "`SAM(params, torch.optim.SGD(...))`",
        lambda: mup2.SAM(_params(), torch.optim.SGD(_params(), lr=0.1)),  # type: ignore[arg-type]
        TypeError,
        "base_optimizer must be a torch optimizer class, got an instance of SGD",
    ),
    (
        "`SAM(params, 0.1)` (the LR where the optimizer class goes)",
        lambda: mup2.SAM(_params(), 0.1),  # type: ignore[arg-type]
        TypeError,
        "base_optimizer must be a torch optimizer class, got 0.1 (float); pass the class",
    ),
    (
        "`SAM(rho='0.05')`",
        lambda: mup2.SAM(_params(), lr=0.1, rho="0.05"),  # type: ignore[arg-type]
        TypeError,
        "rho must be a number, got the string '0.05' (pass 0.05 without the quotes)",
    ),
    (
        "`SAM(lr='0.1')` (a keyword for the base optimizer)",
        lambda: mup2.SAM(_params(), lr="0.1"),
        TypeError,
        "lr must be a number, got the string '0.1' (pass 0.1 without the quotes)",
    ),
    (
        "a param group with `rho='0.1'`",
        lambda: mup2.SAM([{"params": _params(), "rho": "0.1"}], lr=0.1),
        TypeError,
        "param group 0: rho must be a number, got the string '0.1'",
    ),
    (
        "`SAM(every=2.0)`",
        lambda: mup2.SAM(_params(), lr=0.1, every=2.0),  # type: ignore[arg-type]
        TypeError,
        "every must be an integer, got 2.0 (float)",
    ),
    (
        "`SAM(model)` (the model for its parameters)",
        lambda: mup2.SAM(mlp(16), lr=0.1),  # type: ignore[arg-type]
        TypeError,
        "params must be the tensors or param groups to optimize, got Sequential (a model); pass "
        "model.parameters()",
    ),
    (
        "`model.parameters()` given to a second optimizer",
        lambda: mup2.SAM(_used_up(), lr=0.1),
        ValueError,
        "params is an iterator that yields nothing: an iterator (a generator) can be read only "
        "once, and this one was read before or is empty; call model.parameters() again, or "
        "pass a list",
    ),
    (
        "`SAM(model=nn.Linear)` (a class)",
        lambda: mup2.SAM(_params(), lr=0.1, model=torch.nn.Linear),  # type: ignore[arg-type]
        TypeError,
        "model must be the nn.Module it trains (or None), got the class Linear; build it "
        "first: Linear(...)",
    ),
    (
        "`LightSAM(params, torch.optim.Adam)`",
        lambda: mup2.LightSAM(_params(), torch.optim.Adam),  # type: ignore[arg-type]
        TypeError,
        "variant must be one of ['adagrad-norm', 'adagrad', 'adam'], got the class Adam; "
        "LightSAM builds its descent optimizer from the variant",
    ),
    (
        "`LightSAM(betas=('0.9', '0.999'))`",
        lambda: mup2.LightSAM(_params(), betas=("0.9", "0.999")),  # type: ignore[arg-type]
        TypeError,
        "betas must be numbers, got ('0.9', '0.999') (tuple), holding the string '0.9'",
    ),
    (
        "`SAM(params, rule='msam')` (a one-pass rule)",
        lambda: mup2.SAM(_params(), lr=0.1, rule="msam"),
        ValueError,
        "param group 0: rule 'msam' is one-pass: use mup2.MSAM(params, ...)",
    ),
    (
        "`MSAM(params, torch.optim.SGD, momentum=0)`",
        lambda: mup2.MSAM(_params(), torch.optim.SGD, lr=0.1),
        ValueError,
        "param group 0: MSAM perturbs along SGD's momentum, and this group has momentum=0",
    ),
    (
        "`MSAM(params, torch.optim.Adagrad)`",
        lambda: mup2.MSAM(_params(), torch.optim.Adagrad, lr=0.1),
        ValueError,
        "MSAM perturbs along the base optimizer's momentum, and Adagrad keeps none",
    ),
    (
        "`RWP(seed='0')`",
        lambda: mup2.RWP(_params(), lr=0.1, seed="0"),  # type: ignore[arg-type]
        TypeError,
        "seed must be an integer, got the string '0'",
    ),
    (
        "`AdaGradNorm(lr='0.1')`",
        lambda: mup2.AdaGradNorm(_params(), lr="0.1"),  # type: ignore[arg-type]
        TypeError,
        "lr must be a number, got the string '0.1'",
    ),
    (
        "`Parametrization.infer(nn.Linear, base)` (a class for the model)",
        lambda: mup2.Parametrization.infer(torch.nn.Linear, mlp(16)),  # type: ignore[arg-type]
        TypeError,
        "model must be an nn.Module (a built model), got the class Linear; build it first: "
        "Linear(...)",
    ),
    (
        "`Parametrization.infer(model, nn.Linear)` (a class for the base)",
        lambda: mup2.Parametrization.infer(mlp(64), torch.nn.Linear),  # type: ignore[arg-type]
        TypeError,
        "base must be a model at the base width (an nn.Module), a mapping name -> shape, or a "
        "width multiplier, got the class Linear; build it at the base width",
    ),
    (
        "`Parametrization.infer(model, base, 3)`",
        lambda: mup2.Parametrization.infer(mlp(64), mlp(16), 3),  # type: ignore[arg-type]
        TypeError,
        "scheme must be a scheme name (sp, mup-sgd, mup-adam, mup-muon or mup) or a Scheme, "
        "got 3 (int)",
    ),
    (
        "an override role `'bogus'`",
        lambda: _infer(overrides={"4.*": "bogus"}),
        ValueError,
        "override '4.*': role 'bogus' is not a role; choose one of input, hidden, output, scalar",
    ),
    (
        "an override `{'lr_mult': '2'}`",
        lambda: _infer(overrides={"4.*": {"lr_mult": "2"}}),
        TypeError,
        "override '4.*': lr_mult must be a number, got the string '2' (pass 2 without the quotes)",
    ),
    (
        "an override that is a number",
        lambda: _infer(overrides={"4.*": 2.0}),  # type: ignore[dict-item]
        TypeError,
        "override '4.*': an override must be a role name, a dict of Override fields or an "
        "Override, got 2.0 (float)",
    ),
    (
        "`overrides` a list of pairs",
        lambda: _infer(overrides=[("4.*", "output")]),  # type: ignore[arg-type]
        TypeError,
        "overrides must be a dict {pattern: override}",
    ),
    (
        "`param_groups(model.parameters())`",
        lambda: _p().param_groups(mlp(64).parameters()),  # type: ignore[arg-type]
        TypeError,
        "model must be an nn.Module (a built model), got <generator object Module.parameters> "
        "(generator)",
    ),
    (
        "`param_groups(model, lr='0.1')`",
        lambda: _p().param_groups(mlp(64), lr="0.1"),  # type: ignore[arg-type]
        TypeError,
        "lr must be a number, got the string '0.1'",
    ),
    (
        "`coord_check(mlp(64), ...)` (a model for the factory)",
        lambda: _cc(mlp(64)),
        TypeError,
        "factory must build a model from its width: a class such as MLP, or a function such "
        "as partial(MLP, in_features=32), got an instance of Sequential; pass the class",
    ),
    (
        "`coord_check(widths='64,128,256')`",
        lambda: _cc(widths="64,128,256"),
        TypeError,
        "widths must be a sequence of integers such as [64, 128, 256], got the string",
    ),
    (
        "`coord_check(rho='0.1')`",
        lambda: _cc(rho="0.1"),
        TypeError,
        "rho must be a number, got the string '0.1'",
    ),
    (
        "`coord_check(inputs=<numpy array>)`",
        lambda: _cc(inputs=X.numpy()),
        TypeError,
        "inputs must be a tensor (one fixed batch), got an instance of ndarray",
    ),
    (
        "`coord_check(dtype='float64')`",
        lambda: _cc(dtype="float64"),
        TypeError,
        "dtype must be a torch.dtype such as torch.float64, got the string 'float64'",
    ),
    (
        "`coord_check(base_optimizer='sgd')`",
        lambda: _cc(base_optimizer="sgd"),
        TypeError,
        "base_optimizer must be a torch optimizer class, got the string 'sgd'; pass the class, "
        "and its arguments in base_kwargs",
    ),
    (
        "`train(dict)`",
        lambda: train_run(TRAIN),  # type: ignore[arg-type]
        TypeError,
        "config must be a TrainConfig (mup2.config.parse_config(dict), load_config(path)), got {",
    ),
    (
        "`run_sweep(dict, ...)`",
        lambda: mup2.sweep.run_sweep({"name": "s"}, "run"),  # type: ignore[arg-type]
        TypeError,
        "cfg must be a SweepConfig (parse_sweep_config(dict) or load_sweep_config(path)), got",
    ),
    (
        "`prepare(storage, cfg)` (swapped)",
        lambda: prepare("sqlite:///sweep.db", _sweep_cfg()),  # type: ignore[arg-type]
        TypeError,
        "cfg must be a SweepConfig",
    ),
    (
        "`run_worker(storage, study, threads='2')`",
        lambda: mup2.sweep.run_worker("sqlite:///x.db", "s", threads="2"),  # type: ignore[arg-type]
        TypeError,
        "threads must be an integer, got the string '2'",
    ),
    (
        "`mup2.sweep.run(lambda point, report: 0.0, ...)`",
        lambda: mup2.sweep.run(lambda point, report: 0.0, name="s", grid=GRID),
        TypeError,
        "objective must be a function defined at the top level of a module or script, got",
    ),
    (
        "`mup2.sweep.run(config=<a sweep of mup2's training>)`",
        lambda: mup2.sweep.run(config=_sweep_cfg()),
        TypeError,
        "config 's' trains with mup2's own loop (its train section is a TrainConfig); "
        "mup2.sweep.run is for a user objective: use mup2.sweep.run_sweep",
    ),
    (
        "`point.sam(model)` without its parametrization",
        lambda: mup2.sweep.Point("mup2", 64, 0.1, 0.05, 0).sam(mlp(64)),
        TypeError,
        "point.sam(model) needs the model's parametrization: p = point.parametrize(model, base); "
        "point.sam(model, p)",
    ),
    (
        "`report(value, step=1.5)` in an objective",
        lambda: mup2.sweep.Reporter("loss")(0.5, 1.5),  # type: ignore[arg-type]
        TypeError,
        "step must be an integer >= 0, got 1.5",
    ),
    (
        "`train_batched(config)` (one config)",
        lambda: train_batched(parse_config(TRAIN)),  # type: ignore[arg-type]
        TypeError,
        "configs must be a sequence of TrainConfig, got one TrainConfig; pass [config]",
    ),
    (
        "`train_batched([dict])`",
        lambda: train_batched([TRAIN]),  # type: ignore[list-item]
        TypeError,
        "configs[0] must be a TrainConfig (mup2.config.parse_config(...)), got {",
    ),
    (
        "`train_batched(generator read before)`",
        lambda: train_batched(_used_up()),
        ValueError,
        "configs is an iterator that yields nothing",
    ),
]


def _used_up() -> Iterator[TrainConfig]:
    configs = (parse_config(TRAIN) for _ in range(2))
    list(configs)
    return configs


@pytest.mark.parametrize(
    ("what", "make", "kind", "message"), ARGUMENTS, ids=[a[0] for a in ARGUMENTS]
)
def test_a_wrong_argument_gets_a_message_naming_it(
    what: str, make: Callable[[], object], kind: type[Exception], message: str
) -> None:
    with pytest.raises(kind, match=re.escape(message)):
        make()


def test_a_generator_of_widths_is_read_once_by_table1() -> None:
    """``table1`` runs a coordinate check per rule and scaling: a generator of widths (or of
    seeds) serves them all."""
    results = table1(mlp, (w for w in (16, 32, 64)), X, Y, rules=["sam", "asam"],
                     scalings=["mup2"], seeds=(s for s in (0, 1)))  # fmt: skip
    assert [r.widths for r in results] == [(16, 32, 64)] * 2
    assert [r.seeds for r in results] == [(0, 1)] * 2


def table() -> str:
    """The markdown table of docs/errors.md: every case with the message it gets."""
    rows = ["| kind | input | message (exit code 2) |", "|---|---|---|"]
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            code, message = invoke(case, Path(tmp))
            message = message.removeprefix("error: ").replace(tmp, "DIR")
        assert code == 2, message
        text = message.replace("|", "\\|").replace("\n", "<br>")
        rows.append(f"| {case.group} | {case.what} | {text} |")
    for what, make, _ in OPTIMIZERS:
        try:
            make([torch.nn.Parameter(torch.zeros(2))])
        except ValueError as exc:
            rows.append(f"| optimizer | {what} | `ValueError`: {exc} |")
    for what, make, _ in PARAMETRIZATIONS:
        try:
            make()
        except ValueError as exc:
            text = str(exc).replace("|", "\\|")
            rows.append(f"| parametrization | {what} | `{type(exc).__name__}`: {text} |")
    with tempfile.TemporaryDirectory() as tmp:
        here = os.getcwd()
        os.chdir(tmp)  # what a call writes (nothing, if it fails as it should) goes there
        try:
            for what, call, _, _ in ARGUMENTS:
                try:
                    call()
                except (TypeError, ValueError) as exc:
                    text = str(exc).replace("|", "\\|")
                    rows.append(f"| argument | {what} | `{type(exc).__name__}`: {text} |")
        finally:
            os.chdir(here)
    return "\n".join(rows)


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    sys.stdout.write(table() + "\n")
