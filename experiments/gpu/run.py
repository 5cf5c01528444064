"""The one command on a bare GPU machine (issue 26 §3): install the carried wheels, run or resume
a sweep within a time budget, and write its store (gzipped SQLite), its trials as CSV and a log
to the output folder.

    python3 experiments/gpu/run.py CONFIG BUDGET_SECONDS [options] [SWEEP FLAGS ...]

Steps, all inside BUDGET_SECONDS from the start of this command:

1. install the wheels of ``.whl/`` (``fetch_wheels.sh``) offline into ``--site`` (/tmp/site),
   unless optuna, pydantic, sqlalchemy and alembic import already (``--install auto``);
2. print one line about the environment (Python, torch, the GPU, the carried packages);
3. copy the store (``--store``: a ``.db.gz`` or ``.db``; default ``<config stem>.db.gz`` beside
   CONFIG; missing: a new sweep) into a work folder and queue the config's grid points there;
4. run ``mup2 sweep CONFIG`` (``python3 -m mup2.cli`` with ``PYTHONPATH=src``) in ``--root``
   (the repository root: relative data roots such as ``.gpudata/fashion-mnist`` are read from
   there), passing on every flag this command does not know (``--workers 8``, ``--batch auto``);
5. ``--reserve`` seconds (30) before the budget ends, stop it as Ctrl-C does: each worker's running
   trial is queued again, every finished one is kept (a resumed sweep runs the rest);
6. write ``<store stem>.db.gz``, ``<store stem>.csv`` and ``<store stem>.log`` into ``--out``
   (default: ``$OUT``), and print the state of the sweep and the seconds per trial at each
   width of the trials this run finished.

Exit code 0 when the sweep finished or was stopped by the budget; otherwise the sweep's own
(1: failed trials, 2: bad input), or 1 when the store could not be written.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.util
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SRC = REPO / "src"
#: What the wheels provide; if all of them import already, nothing is installed.
CARRIED = ("optuna", "pydantic", "pydantic_core", "sqlalchemy", "alembic", "typing_inspection")
#: The most a file returned from the GPU machine may hold.
RETURN_LIMIT = 16 * 2**20


class Log:
    """Lines to stdout and to the log file, from any thread."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._file: TextIO | None = None

    def open(self, path: Path) -> None:
        with self._lock:
            self._file = path.open("w")
            self._file.writelines(self._lines)
            self._file.flush()

    def write(self, line: str) -> None:
        with self._lock:
            sys.stdout.write(line)
            sys.stdout.flush()
            self._lines.append(line)
            if self._file is not None:
                self._file.write(line)
                self._file.flush()

    def __call__(self, message: str) -> None:
        self.write(f"gpu-run [{time.monotonic() - self._start:5.1f} s] {message}\n")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Flags it does not know go to `mup2 sweep` (so do all after `--`).",
    )
    ap.add_argument(
        "config", type=Path, help="sweep config (.toml, .yaml); a `storage` key is ignored"
    )
    ap.add_argument("budget", type=float, help="seconds this whole command may take")
    ap.add_argument(
        "--store",
        type=Path,
        default=None,
        help="the store to resume: .db.gz or .db "
        "(default: <config stem>.db.gz beside CONFIG; a missing one starts the sweep)",
    )
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT)")
    ap.add_argument(
        "--root",
        type=Path,
        default=REPO,
        help="where the sweep runs: relative data roots are "
        "read from here (default: the repository root)",
    )
    ap.add_argument("--wheels", type=Path, default=REPO / ".whl", help="the carried wheels")
    ap.add_argument("--site", type=Path, default=Path("/tmp/site"), help="where they go")
    ap.add_argument(
        "--install",
        choices=("auto", "always", "never"),
        default="auto",
        help="auto: only when optuna, pydantic, sqlalchemy or alembic does not import",
    )
    ap.add_argument(
        "--reserve",
        type=float,
        default=30.0,
        help="seconds kept at the end to stop the sweep and write the store (default 30)",
    )
    ap.add_argument(
        "--drain",
        type=float,
        default=0.0,
        help="seconds before the stop at which the sweep is asked to finish what it runs and "
        "start nothing new, so that no bundle is cut short (0: off; a bundle's time is a good "
        "value)",
    )
    ap.add_argument(
        "--grace",
        type=float,
        default=15.0,
        help="seconds the stopped sweep gets to queue its trials again before it is killed",
    )
    ap.add_argument(
        "--allow-cpu",
        action="store_true",
        help="run a config with device 'auto' even where no CUDA GPU is found",
    )
    ap.add_argument(
        "--prepare-only",
        action="store_true",
        help="queue the grid points and write the store, run nothing",
    )
    own, after = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    args, extra = ap.parse_known_args(own)
    if args.budget <= 0:
        ap.error(f"BUDGET_SECONDS must be positive, got {args.budget}")
    if args.out is None:
        if not os.environ.get("OUT"):
            ap.error("give --out or set $OUT")
        args.out = Path(os.environ["OUT"])
    if args.store is None:
        args.store = args.config.with_suffix(".db.gz")
    return args, [*extra, *after]


def store_stem(store: Path) -> str:
    name = store.name
    for suffix in (".gz", ".db", ".sqlite"):
        name = name.removesuffix(suffix)
    return name


def _importable(site: Path) -> bool:
    path = [str(SRC), str(site), *sys.path]
    return all(importlib.util.find_spec(m) is not None or _found(m, path) for m in CARRIED)


def _found(module: str, path: list[str]) -> bool:
    return any((Path(p) / module).is_dir() or (Path(p) / f"{module}.py").is_file() for p in path)


def install(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """Install the carried wheels into ``args.site`` (offline, no dependencies resolved)."""
    if args.install == "never" or (args.install == "auto" and _importable(args.site)):
        say("carried packages import already; nothing installed")
        return
    wheels = sorted(args.wheels.glob("*.whl"))
    if not wheels:
        raise SystemExit(
            f"error: no wheels in {args.wheels} and {', '.join(CARRIED)} do not all import: run "
            "experiments/gpu/fetch_wheels.sh here and carry .whl"
        )
    t = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--disable-pip-version-check",
            "--target",
            str(args.site),
            *map(str, wheels),
        ],
        check=True,
    )
    say(f"installed {len(wheels)} wheels into {args.site} in {time.monotonic() - t:.1f} s")


def environment_line() -> str:
    """Python, torch, the GPU (without making a CUDA context here) and the carried packages."""
    import optuna
    import pydantic
    import sqlalchemy
    import torch

    gpu = "no GPU"
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.device_count()} GPU"
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run(
                [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if q.returncode == 0 and q.stdout.strip():
                gpu = q.stdout.strip().splitlines()[0]
    commit = "unknown"
    if (REPO / ".git").exists():
        q = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        commit = q.stdout.strip() or commit
    return (
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA "
        f"{torch.version.cuda}), {gpu}; optuna {optuna.__version__}, pydantic "
        f"{pydantic.__version__}, sqlalchemy {sqlalchemy.__version__}; mup2 at {commit}"
    )


def carried_fashion_mnist(root: Path) -> Path:
    """Where build_data.py puts Fashion-MNIST in the repository ``root``; configs without a
    data root read it there (``MUP2_FASHION_MNIST_DIR``, set by :func:`main`)."""
    return root / ".gpudata" / "fashion-mnist"


def check_data(cfg: Any, root: Path) -> None:
    """The config's data must be there, and cut to the config's sizes (build_data.py's
    manifest): mup2 normalizes with the statistics of the training images it loads."""
    import json

    data = cfg.train.data
    if data.name not in ("fashion-mnist", "idx"):
        return
    if data.root is None:  # read from the carried copy (MUP2_FASHION_MNIST_DIR, set in main)
        if data.name != "fashion-mnist" or os.environ.get("MUP2_FASHION_MNIST_DIR"):
            return
        folder = carried_fashion_mnist(root)
        if not folder.is_dir():
            return  # mup2 finds its default location (and says so if the data is missing)
    else:
        folder = Path(data.root) if Path(data.root).is_absolute() else root / data.root
    if not folder.is_dir():
        raise SystemExit(
            f"error: no data in {folder}: run `python3 experiments/gpu/build_data.py --config "
            "CONFIG` here and carry .gpudata"
        )
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return
    splits = json.loads(manifest.read_text())["splits"]
    for split, want in (("train", data.train_size), ("test", data.test_size)):
        have = splits[split]
        ok = want == have["size"] if not have["full"] else want is None or want <= have["size"]
        if not ok:
            raise SystemExit(
                f"error: {folder} holds {have['size']} {split} examples, the config wants "
                f"{want if want is not None else 'all'}: rebuild it with `python3 "
                "experiments/gpu/build_data.py --config CONFIG`"
            )


def without_storage(config: Path, work: Path) -> Path:
    """A copy of the sweep config ``config`` in ``work`` without its ``storage`` key (YAML, which
    mup2 reads as well as TOML); the sweep config stored in the study ignores ``storage``."""
    import tomllib

    import yaml

    text = config.read_text(encoding="utf-8")
    data = tomllib.loads(text) if config.suffix == ".toml" else yaml.safe_load(text)
    data.pop("storage", None)
    copy = work / f"{config.stem}.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return copy


def open_store(store: Path, db: Path, say: Callable[[str], None]) -> None:
    """Copy the store to resume (gunzipped) to ``db``."""
    if not store.is_file():
        say(f"no store at {store}: a new sweep")
        return
    if store.suffix == ".gz":
        with gzip.open(store, "rb") as src, db.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        shutil.copyfile(store, db)
    say(f"resuming {store} ({db.stat().st_size / 2**20:.1f} MiB)")


class Sweep:
    """``mup2 sweep`` in its own process group, its output copied to the log."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Log) -> None:
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._copy, args=(log,), daemon=True)
        self._reader.start()

    def _copy(self, log: Log) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            log.write(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, seconds: float) -> bool:
        try:
            self.proc.wait(timeout=max(seconds, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def drain(self) -> None:
        """SIGUSR1 to every process of the sweep: each worker finishes and records the trials
        it runs, then claims no more (``mup2.sweep.engine.DRAIN_SIGNAL``)."""
        self._signal_group(signal.SIGUSR1)

    def stop(self, grace: float, say: Callable[[str], None]) -> None:
        """Ctrl-C to the driver: it stops its workers, which queue their trials again. After
        ``grace`` seconds, SIGTERM to every process of the sweep (the same, from each worker),
        then SIGKILL."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
        end = time.monotonic() + grace
        while self._group_alive() and time.monotonic() < end:
            self.proc.poll()
            time.sleep(0.2)
        if self._group_alive():
            say("the sweep did not stop in time: SIGTERM")
            self._signal_group(signal.SIGTERM)
            end = time.monotonic() + 10.0
            while self._group_alive() and time.monotonic() < end:
                self.proc.poll()
                time.sleep(0.2)
        if self._group_alive():
            say(
                "the sweep still runs: SIGKILL (its running trials stay 'running' until a later "
                "sweep finds them stale and queues them again)"
            )
            self._signal_group(signal.SIGKILL)
        self.proc.wait()

    def finish(self) -> int:
        self.proc.wait()
        self._reader.join(timeout=10.0)
        return int(self.proc.returncode)


def export(
    cfg: Any,
    storage: str,
    db: Path,
    out: Path,
    stem: str,
    before: set[int],
    say: Callable[[str], None],
) -> bool:
    """Fold the write-ahead log into the store, write it gzipped and its trials as CSV, and
    print the sweep's state and this run's seconds per trial at each width."""
    from mup2.report import load_sweep, write_trials_csv
    from mup2.sweep import open_sweep, sweep_state

    with sqlite3.connect(db, timeout=60) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    target = out / f"{stem}.db.gz"
    with db.open("rb") as src, gzip.open(target, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst)
    sweep = load_sweep(storage, cfg.name)
    csv = write_trials_csv(sweep, out / f"{stem}.csv")
    study, _, points = open_sweep(storage, cfg.name)
    state = sweep_state(study, points)
    say(
        f"sweep {cfg.name}: {state.complete}/{state.total} complete ({state.unstable} unstable), "
        f"{state.waiting} waiting, {state.running} running, {state.failed} failed"
    )
    per_width: dict[int, list[float]] = defaultdict(list)
    for run in sweep.runs:
        fresh = run.number not in before and run.state == "COMPLETE"
        if fresh and run.width is not None and run.seconds is not None:
            per_width[run.width].append(run.seconds)
    for width in sorted(per_width):
        s = per_width[width]
        say(f"  width {width}: {len(s)} trials this run, {sum(s) / len(s):.2f} s per trial")
    ok = True
    for path in (target, csv):
        size = path.stat().st_size
        say(f"wrote {path} ({size / 2**20:.2f} MiB)")
        if size > RETURN_LIMIT:
            say(f"error: {path.name} is over the 16 MiB a returned file may hold")
            ok = False
    return ok


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    args, sweep_flags = parse_args(sys.argv[1:] if argv is None else argv)
    deadline = start + args.budget - args.reserve
    config = args.config.resolve()
    store = args.store.resolve()
    out, root = args.out.resolve(), args.root.resolve()
    stem = store_stem(store)
    out.mkdir(parents=True, exist_ok=True)
    log = Log()
    log.open(out / f"{stem}.log")
    say = log

    stop_asked = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:  # stop the sweep, still write the store
        stop_asked.set()

    signal.signal(signal.SIGINT, on_signal)  # children then get the default Ctrl-C
    signal.signal(signal.SIGTERM, on_signal)

    try:
        install(args, say)
        site = args.site.resolve()
        for p in (str(site), str(SRC)):  # SRC first
            if p not in sys.path:
                sys.path.insert(0, p)
        importlib.invalidate_caches()
        say(environment_line())

        import optuna
        import torch

        from mup2.sweep import load_sweep_config, prepare, sweep_state

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        cfg = load_sweep_config(config)
        if cfg.train.device == "auto" and not torch.cuda.is_available() and not args.allow_cpu:
            raise SystemExit(
                f"error: no CUDA GPU here, and {config.name} has device 'auto': it would run on "
                "the CPU (give --allow-cpu for that)"
            )
        check_data(cfg, root)
        work = Path(tempfile.mkdtemp(prefix=f"mup2-gpu-{stem}-"))
        if cfg.storage:  # the store is --store: the sweep runs a copy without the key
            config = without_storage(config, work)
            say(f"{args.config} names a storage ({cfg.storage}); the sweep uses {store} instead")
        db = work / "sweep.db"
        storage = f"sqlite:///{db}"
        open_store(store, db, say)
        t = time.monotonic()
        study, points = prepare(cfg, storage)
        state = sweep_state(study, points)
        trials = study.get_trials(deepcopy=False)
        before = {tr.number for tr in trials if tr.state.name == "COMPLETE"}
        say(
            f"sweep {cfg.name}: {state.complete}/{state.total} complete, {state.waiting} "
            f"waiting (queued in {time.monotonic() - t:.1f} s); "
            f"{deadline - time.monotonic():.0f} s to run"
        )
    except SystemExit as exc:  # a bad config, data or wheels: say why in the log too
        if isinstance(exc.code, str):
            say(exc.code)
        log.close()
        return 2
    except BaseException as exc:
        say(f"error: {type(exc).__name__}: {exc}")
        log.close()
        raise

    rc, stopped = 0, False
    if deadline <= time.monotonic() and not (args.prepare_only or state.finished):
        say("no time left to run the sweep: give a larger budget")
    elif not (args.prepare_only or state.finished or stop_asked.is_set()):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SRC), str(site), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        carried = carried_fashion_mnist(root)
        if carried.is_dir():  # configs without a data root read the carried copy
            env.setdefault("MUP2_FASHION_MNIST_DIR", str(carried))
        command = [
            sys.executable,
            "-m",
            "mup2.cli",
            "sweep",
            str(config),
            "--run-dir",
            str(work),
            "--no-report",
            "--no-progress",
            *sweep_flags,
        ]
        say("$ python3 " + " ".join(command[1:]))
        sweep = Sweep(command, root, env, log)
        drain_at, drained = deadline - args.drain, False
        while sweep.alive() and not stop_asked.is_set() and time.monotonic() < deadline:
            if args.drain > 0 and not drained and time.monotonic() >= drain_at:
                say(f"{args.drain:.0f} s to the deadline: the sweep finishes what runs (SIGUSR1)")
                sweep.drain()
                drained = True
            sweep.wait(min(1.0, deadline - time.monotonic()))
        stopped = drained
        if sweep.alive():
            why = "asked to stop" if stop_asked.is_set() else "the budget's deadline"
            say(f"{why}: stopping the sweep (its running trials are queued again)")
            sweep.stop(args.grace, say)
            stopped = True
        rc = sweep.finish()
        say(f"the sweep exited with {rc}{' (stopped)' if stopped else ''}")
    try:
        exported = export(cfg, storage, db, out, stem, before, say)
    except Exception as exc:
        say(f"error: the store could not be written: {type(exc).__name__}: {exc}")
        exported = False
    say(f"done in {time.monotonic() - start:.0f} s of {args.budget:.0f}")
    log.close()
    shutil.rmtree(work, ignore_errors=True)
    if not exported:
        return 1
    if stopped or stop_asked.is_set():
        return 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
