"""Train a second run at the same time as the one in this process, in its own process (CPUs).

The ``cpu`` presets' towers are small: a training step is a long chain of small operators, and a second
intra-op thread speeds one run up by far less than 2x. Two runs of one thread each, side by side, get through
about 1.2-1.8x the training pairs per second of one run on two threads (``benchmarks/README.md``, "Fourth pass"). So
``11_train_php`` trains PHP in the kernel on one thread while notebook 40's batch-axis PHP trains in a
second process (``python -m irra_core.train``) on the other; notebook 40 then finds that run finished and
only evaluates it (:func:`irra_core.engine.fit` resumes a finished run without training).

:func:`plan_alongside` decides whether that pays: only on the CPU, and only with at least two torch threads to
share. Elsewhere (a GPU, one thread) it returns ``None`` and the companion run is left to the notebook that
needs it.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from irra_core.errors import UserError

__all__ = ["AlongsideError", "AlongsideRun", "AlongsideWatch", "alongside_config_path", "plan_alongside",
           "start_alongside", "training_alongside"]


class AlongsideError(UserError):
    """The run trained alongside failed; the message names it, its exit status and the end of its log."""


@dataclass
class AlongsideRun:
    """A training run in a child process: ``python -m irra_core.train --config <config> --run_dir <run_dir>``.

    Attributes:
        name: the run's name in messages (its folder name).
        run_dir: where it trains (a normal run folder: ``config.yaml``, ``log.jsonl``, checkpoints).
        log_path: the child's stdout and stderr.
        threads: its torch intra-op threads (``OMP_NUM_THREADS``).
        process: the child.
    """

    name: str
    run_dir: Path
    log_path: Path
    threads: int
    process: subprocess.Popen = field(repr=False)
    started: float = field(default_factory=time.time)
    #: set once a failure has been reported (by :class:`AlongsideWatch` or :func:`training_alongside`)
    reported: bool = False

    def running(self) -> bool:
        """Whether the child has not exited yet."""
        return self.process.poll() is None

    def _this_start(self) -> list[str]:
        """The log lines this start wrote (the log keeps earlier starts above a ``== start`` line each)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        starts = [i for i, line in enumerate(lines) if line.startswith(_START_MARK)]
        return lines[starts[-1] + 1:] if starts else lines

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines this start wrote ("" when it wrote nothing)."""
        return "\n".join(deque(self._this_start(), maxlen=lines)).rstrip()

    def epoch_lines(self) -> list[str]:
        """This start's one-line epoch summaries (``epoch N done: loss ... val t2i R1 ...``), in order."""
        return [line for line in self._this_start() if re.match(r"epoch \d+ done:", line)]

    def wait(self) -> float:
        """Block until the child exits; returns its wall time in seconds (start to its last output).

        Raises:
            AlongsideError: it exited with a non-zero status (the message quotes the end of its log).
        """
        status = self.process.wait()
        if status != 0:
            raise AlongsideError(
                f"{self.name}: the run trained alongside exited with status {status} (log {self.log_path}); "
                f"its last lines:\n{self.tail()}\nNotebook 40 resumes {self.run_dir} (or rerun 11_train_php); delete "
                f"that folder to start it again")
        try:
            ended = os.path.getmtime(self.log_path)
        except OSError:
            ended = time.time()
        return max(0.0, ended - self.started)

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 10 s) if it is still running."""
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def plan_alongside(device: Any, threads: int | None = None) -> tuple[int, int] | None:
    """How to share the CPU between this process's run and one run alongside: ``(this, other)`` threads.

    Args:
        device: where the runs train (``torch.device`` or a name); only ``cpu`` runs side by side.
        threads: torch threads to share (default ``torch.get_num_threads()``).

    Returns:
        ``(threads // 2 + threads % 2, threads // 2)``, or ``None`` (train one after the other) on a GPU or
        with fewer than two threads.
    """
    import torch

    threads = torch.get_num_threads() if threads is None else int(threads)
    if torch.device(device).type != "cpu" or threads < 2:
        return None
    return threads - threads // 2, threads // 2


#: the first line each start appends to the log (a resumed run keeps the output of its earlier starts)
_START_MARK = "== start of python -m irra_core.train alongside, "

#: the child's entry: ask Linux for SIGTERM when the starting process dies (a killed kernel leaves no orphan
#: writing into the run folder), then run ``python -m irra_core.train`` with the remaining arguments
_CHILD = """import os, signal, sys, runpy
if sys.platform.startswith("linux"):
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != int(os.environ["IRRA_ALONGSIDE_PARENT"]):
        sys.exit("irra_core.alongside: the process that started this run has exited")
runpy.run_module("irra_core.train", run_name="__main__", alter_sys=True)
"""


def alongside_config_path(run_dir: str | Path) -> Path:
    """``<run_dir>.alongside.yaml``: the config :func:`start_alongside` hands the child, beside its run folder
    (its presence marks a run started alongside)."""
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + ".alongside.yaml")


class AlongsideWatch:
    """A :func:`irra_core.engine.fit` callback for the run in this process: after each step, notices that the
    run alongside has failed, reports it at once (not after this run's last step) and gives this process all
    ``threads`` for the rest of its training.

    A run alongside that finishes normally changes nothing here: this run keeps its thread count to the end, so
    its arithmetic, and with it its result to the last bit, does not depend on when the other run finished.
    """

    def __init__(self, run: AlongsideRun, threads: int) -> None:
        self.run, self.threads, self.done = run, int(threads), False

    def on_step(self, state: Any) -> None:
        if self.done or self.run.running():
            return
        self.done = True
        if self.run.process.returncode != 0:
            import torch

            torch.set_num_threads(self.threads)
            self.run.reported = True
            print(f"warning: {self.run.name}, trained alongside, exited with status {self.run.process.returncode} "
                  f"(log {self.run.log_path}); its last lines:\n{self.run.tail()}\nthis run goes on with "
                  f"{self.threads} threads", flush=True)


def start_alongside(cfg: Any, run_dir: str | Path, threads: int = 1) -> AlongsideRun:
    """Start training ``cfg`` into ``run_dir`` in a child process with ``threads`` torch threads: the
    child runs ``python -m irra_core.train --config ... --run_dir ... --resume`` and, on Linux, is stopped
    when this process dies.

    The config goes to the child as YAML (``<run_dir>.alongside.yaml``, beside the run folder); the child
    resumes the folder when it already holds the same run (:meth:`irra_core.runs.RunDir.open`) and, when
    that run had finished, only re-reads its metrics. Its output is appended to ``<run_dir>.alongside.log``
    (one ``== start`` line per start, so a resumed run keeps the earlier output); progress is written as plain
    lines.

    Args:
        cfg: the run's :class:`~irra_core.config.Config`.
        run_dir: its run folder.
        threads: ``OMP_NUM_THREADS`` of the child (>= 1).

    Raises:
        ValueError: ``threads`` < 1.
    """
    from irra_core import paths
    from irra_core.config import copy_config, save_config, set_value

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg = copy_config(cfg)
    set_value(cfg, "train.progress", "lines", source="alongside")
    config_path = alongside_config_path(run_dir)
    log_path = run_dir.with_name(run_dir.name + ".alongside.log")
    save_config(cfg, config_path)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg",
               PYTHONUNBUFFERED="1", IRRA_ALONGSIDE_PARENT=str(os.getpid()))
    root = str(paths.project_root())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-c", _CHILD, "--config", str(config_path), "--run_dir", str(run_dir),
               "--resume"]
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"{_START_MARK}{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=os.getcwd())  # the kernel's folder: relative paths agree
    return AlongsideRun(run_dir.name, run_dir, log_path, threads, process)


@contextlib.contextmanager
def training_alongside(cfg: Any, run_dir: str | Path, threads: tuple[int, int], *,
                       warn: bool = False) -> Iterator[AlongsideRun]:
    """Train ``cfg`` into ``run_dir`` in a child process while the block trains here.

    The block runs with ``threads[0]`` torch threads, the child with ``threads[1]`` (see
    :func:`plan_alongside`). On leaving the block normally, waits for the child; on an error or interrupt in
    the block, stops the child (it resumes from its last finished epoch next time).

    Args:
        warn: a failed child is a printed warning (quoting its log, unless :class:`AlongsideWatch` already
            did) instead of an error: the block's own run is fine, and the notebook that needs the other run
            resumes or retrains it.

    Raises:
        AlongsideError: the child failed (not with ``warn``).
    """
    from irra_core.runtime import torch_threads

    run = start_alongside(cfg, run_dir, threads[1])
    try:
        with torch_threads(threads[0]):
            yield run
        if run.running():
            print(f"waiting for {run.name}, trained alongside (log {run.log_path}) ...", flush=True)
        seconds = run.wait()
    except AlongsideError as error:
        if not warn:
            raise
        if not run.reported:
            print(f"warning: {error}", flush=True)
        print(f"{run.name} did not finish alongside: the notebook that needs it resumes or retrains it", flush=True)
        return
    except BaseException:
        run.stop()
        raise
    epochs = "".join(f"\n  {line}" for line in run.epoch_lines()) or " (a finished run: nothing left to train)"
    print(f"{run.name}: trained alongside in {seconds:.0f} s on {run.threads} thread(s){epochs}", flush=True)
