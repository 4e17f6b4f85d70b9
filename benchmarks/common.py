"""Shared pieces of the benchmarks: paths, logging, and running a simulated federation.

* `ROOT`, `RESULTS`, `DATA_DIR`: the repository, ``benchmarks/results`` and the public data sets,
  ``<repo>/../shared/data`` (beside this checkout; ``$FEDMOL_BENCH_DATA`` overrides it).
* `log`, `quiet_warnings`, `json_default` (numpy values as numbers and lists).
* `run_flower`: one federation in Flower's simulation engine (LocalSuperLink + flwr_run), with
  progress lines, per-round wall-clock times and (optionally) the RSS of the SuperLink's process
  tree sampled with psutil. Everything it starts is stopped when it returns. `flower_leftovers`
  lists processes still running under a work folder.

The data sets, their preparation and site splits are in `benchmarks.sets`. Run every benchmark as
a module from the repository root: ``.venv/bin/python -m benchmarks.NAME [--quick] [--out DIR]``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("FEDMOL_BENCH_DATA") or ROOT.parent / "shared" / "data")
RESULTS = ROOT / "benchmarks" / "results"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def quiet_warnings() -> None:
    import pandas as pd

    warnings.filterwarnings("ignore", category=pd.errors.PerformanceWarning)


def json_default(o: Any) -> Any:
    """For ``json.dumps(default=...)``: numpy scalars and arrays as numbers and lists, anything else as text."""
    if hasattr(o, "tolist"):  # numpy scalar or array
        return o.tolist()
    return str(o)


def fedavg_round(sites: list[Any], cfg: Any, shared: dict[str, Any], *, server_round: int,
                 federation_id: str) -> tuple[dict[str, Any], list[Any]]:
    """One round of the federation in process, without Flower's transport (it moves the same numpy
    arrays): every site's `SiteNode.train_round` on ``shared``, each reply decoded as the server
    decodes it (`fedmol.transport.decode_update`), and FedAvg's label-weighted mean. Returns the mean
    (float32) and the sites' replies."""
    import numpy as np

    from fedmol import wire
    from fedmol.transport import decode_update

    replies = [s.train_round(cfg, shared, server_round=server_round, federation_id=federation_id) for s in sites]
    weights = np.array([r.metrics[wire.NUM_TRAIN_LABELS] for r in replies], dtype=np.float64)
    weights /= weights.sum()
    if any(r.arrays is None for r in replies):
        raise RuntimeError(f"round {server_round}: a site sent no arrays")
    trained = [decode_update(r.arrays or {}, shared) for r in replies]
    mean = {k: sum(w * t[k].astype(np.float64) for w, t in zip(weights, trained, strict=True)).astype(np.float32)
            for k in shared}
    return mean, replies


@dataclass
class FlowerRun:
    """What one simulated federation did."""

    code: int
    outputs: dict[str, Any]
    seconds: float
    round_seconds: list[float]  # from the end of round k-1 (round 1: the start) to the end of round k
    rss_peak_bytes: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)

    def federated_table(self, label: str) -> Any:
        """The server's final per-site, per-task table (a GainTable); raises if the run failed."""
        from fedmol.models.report import GainTable

        if self.code != 0 or "table" not in self.outputs:
            raise RuntimeError(f"{label}: the federation failed (exit {self.code}):\n" + "\n".join(self.log_tail))
        return GainTable.from_json(self.outputs["table"])


class TreeSampler(threading.Thread):
    """Sum of RSS over a process and all its descendants, every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.peak = 0
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def sample(self) -> int:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def run(self) -> None:
        while not self._halt.is_set():
            rss = self.sample()
            self.samples.append((round(time.monotonic() - self.t0, 2), rss))
            self.peak = max(self.peak, rss)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def run_flower(cfg: Any, n_sites: int, workdir: Path, *, label: str = "", sample_memory: bool = False,
               on_line: Callable[[str], None] | None = None, timeout: float = 3600.0, retries: int = 1) -> FlowerRun:
    """Run ``cfg`` (a FederationConfig with sim_store_dir/output_dir set) in the simulation engine.

    A run that ends without the server's outputs (e.g. Ray's "node timed out during startup" on
    a loaded machine; flwr then still exits 0) is retried ``retries`` times from scratch.
    """
    import shutil

    for attempt in range(retries + 1):
        run = _run_flower_once(cfg, n_sites, workdir, label=label, sample_memory=sample_memory,
                               on_line=on_line, timeout=timeout)
        if run.code == 0 and run.outputs:
            return run
        log(f"{label}: the federation ended without results (exit {run.code}); see {workdir / 'flower'}")
        if attempt < retries:
            shutil.rmtree(cfg.output_path, ignore_errors=True)
            shutil.rmtree(workdir / "flower", ignore_errors=True)
            log(f"{label}: retrying")
    return run


def _run_flower_once(cfg: Any, n_sites: int, workdir: Path, *, label: str, sample_memory: bool,
                     on_line: Callable[[str], None] | None, timeout: float) -> FlowerRun:
    from fedmol.deploy.launcher import LocalSuperLink, flwr_run

    lines: list[str] = []
    t0 = time.monotonic()

    def handle(line: str) -> None:
        lines.append(line)
        if "[ROUND " in line:
            rnd = line.split("[ROUND ")[1].split("]")[0]
            log(f"{label} round {rnd} ({time.monotonic() - t0:.0f} s since start)")
        elif "ERROR" in line or "Traceback" in line:
            print("    " + line, flush=True)
        if on_line:
            on_line(line)

    # Round ends from the server's checkpoints (written after every round): Flower's streamed log
    # arrives in bursts, so its "[ROUND k]" lines are not a clock.
    ends: dict[int, float] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for state in (cfg.output_path / "checkpoints").glob("*/state.json"):
                try:
                    rnd = int(json.loads(state.read_text())["server_round"])
                except (OSError, ValueError, KeyError):
                    continue
                ends.setdefault(rnd, time.monotonic())
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    sampler: TreeSampler | None = None
    with LocalSuperLink(workdir / "flower") as link:
        if sample_memory:
            assert link.proc is not None
            sampler = TreeSampler(link.proc.pid)
            sampler.start()
        try:
            code = flwr_run(link, cfg.to_run_config(), on_line=handle, timeout=timeout,
                            federation_config={"num-supernodes": n_sites, "client-resources-num-cpus": 1})
        finally:
            if sampler:
                sampler.stop()
    end = time.monotonic()
    stop.set()
    watcher.join(timeout=2)
    (workdir / "flower" / "run.log").write_text("\n".join(lines) + "\n")
    outputs_path = cfg.output_path / "last_federation.json"
    outputs = json.loads(outputs_path.read_text()) if outputs_path.exists() else {}
    times = [t0] + [ends[r] for r in sorted(ends)]
    rounds = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
    return FlowerRun(code=code, outputs=outputs, seconds=end - t0, round_seconds=rounds,
                     rss_peak_bytes=sampler.peak if sampler else 0,
                     rss_samples=sampler.samples if sampler else [], log_tail=lines[-40:])


def flower_leftovers(work: Path, wait: float = 15.0) -> list[str]:
    """Processes still running in ``work`` (Flower, Ray: they run with cwd there) after ``wait`` s.

    Only our own: other Flower processes on the machine (a test suite, a demo) are not ours."""
    deadline = time.monotonic() + wait
    while True:
        left = _processes_under(work.resolve())
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _processes_under(work: Path) -> list[str]:
    import psutil

    left = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cwd = p.info.get("cwd") or ""
        if cwd and Path(cwd).is_relative_to(work) and p.pid != psutil.Process().pid:
            left.append(f"{p.pid} {' '.join(p.info.get('cmdline') or [])[:120]}")
    return left
