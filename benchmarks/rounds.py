"""Round overhead of the deployment engine on loopback, and bytes sent per site per round.

    .venv/bin/python -m benchmarks.rounds            # 3 sites, Tox21 rows, 32,768 bits, 4 rounds
    .venv/bin/python -m benchmarks.rounds --n-bits 2048 --rows 400   # a smaller model and sites
    .venv/bin/python -m benchmarks.rounds --n-bits 2048 32768        # every configuration at both sizes
    .venv/bin/python -m benchmarks.rounds --only warm                # one configuration
    .venv/bin/python -m benchmarks.rounds --quick    # smoke run: 2 sites, 1 round, 2 configurations

Five configurations run in one invocation on the same consortium set-up (SuperLink with TLS and
SuperNode authentication, one SuperNode per site, all on 127.0.0.1):

* ``flower-default``: Flower's SuperNode (3 s idle wait) and a fresh ClientApp process per
  message that does all the work (imports torch, loads the store); train and evaluate messages;
* ``warm-two-messages``: `fedmol-supernode` (0.25 s idle wait) with ``--isolation process`` and
  the site runtime (`fedmol site worker`) running the ClientApp warm; train and evaluate messages;
* ``warm``: the same with ``evaluate-in-train`` (the default): one message per round;
* ``warm-fp16``: the same with ``transport-dtype=float16`` (half the upload and the download);
* ``warm-int8``: the same with ``transport-dtype=int8`` (the update in 8 bits with a float32 scale
  per row, zlib-compressed, `fedmol.transport`; the model comes down as its change against the copy
  each site kept, encoded the same way, after a first round in float16). The default.
* ``warm-int8-db``: the same with the SuperLink's link state (registered SuperNodes, runs, message
  headers) in a SQLite file, as the production templates keep it (deploy/systemd, deploy/compose);
  the other rows keep it in memory, as `fedmol consortium up` does. Every row runs
  `fedmol-superlink`, which keeps the messages' arrays in memory (`fedmol.server.superlink`).

``--n-bits`` takes one or more fingerprint sizes: each configuration runs at each (a row per size
and configuration; the default, 32,768 bits, gives the float32, float16 and int8 rows at the
default model size).

All use fedmol's fast-polling Grid and a 0.05 s SuperExec poll (FLWR_SUPEREXEC_TASK_POLL_INTERVAL).
Per round r: wall time on the server's clock (MLflow ``round-wall-seconds``: from the previous
aggregation to this one), the slowest site's own compute in that time (its evaluation of round
r-1's model plus its round-r training, as the sites report them), and the overhead = wall -
compute. Per site per round: bytes uploaded (from the sites' outbox ledgers) against the size of
the trunk in float32, and bytes downloaded (the shared model in the train message's dtype: float16
with float16 transport; with int8 its change against the sites' copy; the server's metric
``download-bytes-per-site``, median of rounds 2 and later). Round 1 is reported apart (it includes
start-up). Results go to ``rounds.json`` and ``.md`` in ``--out`` (default benchmarks/results; ``rounds_quick.*`` with
``--quick``). The machine may be shared: compare within one run. Scratch space (PKI, Flower
state, site stores) is a fresh temporary folder, removed after a successful run (``--workdir``
keeps it where you say).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import DATA_DIR, RESULTS, log
from benchmarks.sets import benchmark_key


def make_sites(root: Path, n_sites: int, rows: int, n_bits: int) -> dict[str, Path]:
    import pandas as pd

    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.prepare import PrepareSettings, prepare_frame
    from fedmol.datasets.readers import TableSpec

    key = benchmark_key()
    df = pd.read_csv(DATA_DIR / "tox21.csv.gz", nrows=n_sites * rows)
    tasks = tuple(c for c in df.columns if c not in ("smiles", "mol_id"))
    settings = PrepareSettings(table=TableSpec(smiles_col="smiles", id_col="mol_id", task_cols=tasks),
                               featurize=FeaturizeSettings(n_bits=n_bits))
    res = prepare_frame(df, key, None, settings, workers=None)
    stores = {}
    for i in range(n_sites):
        name = f"site{i}"
        sub = res.store.subset(range(i * len(res.store.folds) // n_sites, (i + 1) * len(res.store.folds) // n_sites))
        sub.settings["site_name"] = name
        stores[name] = sub.save(root / name)
    return stores, tasks


def measure(label: str, root: Path, stores: dict[str, Path], tasks: tuple[str, ...], args: argparse.Namespace,
            *, n_bits: int, warm: bool, dtype: str, fold: bool = True, persistent: bool = False) -> dict:
    from mlflow.tracking import MlflowClient

    from fedmol.deploy.consortium import LocalConsortium

    log(f"{label}: starting the consortium ({len(stores)} sites, {'warm site runtime' if warm else 'Flower'})")
    cons = LocalConsortium(root / label, stores, mlflow_server=False, warm=warm, persistent_link=persistent)
    with cons:
        cons.wait_for_nodes(len(stores), timeout=120)
        log(f"{label}: {len(stores)} nodes connected; {args.rounds} rounds")
        cfg = cons.config(num_server_rounds=args.rounds, n_bits=n_bits, hidden=str(args.hidden),
                          consortium_tasks=",".join(f"{t}:classification" for t in tasks), num_threads=1,
                          transport_dtype=dtype, register_model=False, run_name=label, evaluate_in_train=fold,
                          finetune_epochs=0, local_baseline=False)  # the round, not the final evaluation
        marks: list[tuple[float, str]] = []
        t0 = time.time()
        code = cons.run(cfg, on_line=lambda line: marks.append((time.time() - t0, line)), timeout=3600)
        if code != 0:
            raise SystemExit(f"{label}: flwr run failed ({code}); see {root / label}")
        log(f"{label}: run done in {time.time() - t0:.0f} s")
    (root / label / "serverapp-timeline.log").write_text("".join(f"{t:9.3f} {line}\n" for t, line in marks))
    out = json.loads((cons.output_dir / "last_federation.json").read_text())
    client = MlflowClient(out["tracking_uri"])
    run_id = out["mlflow_run_id"]

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run_id, key)}

    # The server's clock: seconds from one aggregation to the next (round 1: from the start).
    wall_by_round = history("round-wall-seconds")
    rounds = sorted(wall_by_round)
    walls = [wall_by_round[r] for r in rounds]
    # Between two aggregations each site evaluates the previous round's model and trains.
    per_site = {s: (history(f"site/{s}/train_seconds"), history(f"site/{s}/eval_seconds")) for s in stores}
    compute = [max(tr.get(r, 0.0) + ev.get(r - 1, 0.0) for tr, ev in per_site.values()) for r in rounds]
    overhead = [w - c for w, c in zip(walls, compute, strict=True)]
    uploads = []
    for path in stores.values():
        for line in (path / "outbox.jsonl").read_text().splitlines():
            e = json.loads(line)
            if e["phase"] == "train" and e["federation_id"] == out["federation_id"]:
                uploads.append(e["bytes_total"])
    trunk_bytes = 4 * (n_bits * args.hidden + args.hidden)
    # What each site receives per round: the shared model as the train messages carried it (the
    # server's metric; int8: the whole model in round 1, then its change against the sites' copy).
    from fedmol.transport import download_dtype

    downloads = [history("download-bytes-per-site").get(r) for r in rounds]
    later = slice(1, None)
    return {
        "label": label, "n_bits": n_bits, "warm": warm, "transport_dtype": dtype, "evaluate_in_train": fold,
        "round_wall_s": walls, "slowest_site_compute_s": compute, "overhead_s": overhead,
        "first_round_overhead_s": overhead[0] if overhead else None,
        "median_overhead_s_after_round_1": statistics.median(overhead[later]) if len(overhead) > 1 else None,
        "median_wall_s_after_round_1": statistics.median(walls[later]) if len(walls) > 1 else None,
        "bytes_per_site_per_round": statistics.median(uploads) if uploads else None,
        "download_bytes_per_site": downloads, "download_dtype": download_dtype(cfg),
        "download_bytes_per_site_per_round": _median_after_first(downloads),
        "trunk_bytes_float32": trunk_bytes,
        "upload_over_trunk": (statistics.median(uploads) / trunk_bytes) if uploads else None,
    }


def _median_after_first(values: list[float | None]) -> float | None:
    later = [v for v in values[1:] if v is not None]
    return statistics.median(later) if later else (values[0] if values else None)


CONFIGS = {
    "flower-default": {"warm": False, "dtype": "float32", "fold": False},
    "warm-two-messages": {"warm": True, "dtype": "float32", "fold": False},
    "warm": {"warm": True, "dtype": "float32"},
    "warm-fp16": {"warm": True, "dtype": "float16"},
    "warm-int8": {"warm": True, "dtype": "int8"},
    "warm-int8-db": {"warm": True, "dtype": "int8", "persistent": True},
}


QUICK_CONFIGS = ("flower-default", "warm-fp16")  # Flower's own SuperNode, and the warm site runtime


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--rows", type=int, default=800, help="Tox21 rows per site")
    p.add_argument("--n-bits", type=int, nargs="+", default=[32768],
                   help="fingerprint size(s): every configuration runs at each (default 32768)")
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 2 sites of 300 rows, 2,048 bits, hidden 32, 1 round, configurations "
                        + " and ".join(QUICK_CONFIGS))
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the scratch space (PKI, Flower state, site stores) in this new or empty folder "
                        "(default: a temporary folder, removed after a successful run)")
    p.add_argument("--only", choices=sorted(CONFIGS), action="append",
                   help="run only this configuration (repeatable; default: all, for the report)")
    args = p.parse_args(argv)
    if args.quick:
        args.sites, args.rows, args.n_bits, args.hidden, args.rounds = 2, 300, [2048], 32, 1
        args.only = args.only or list(QUICK_CONFIGS)
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        p.error(f"--workdir {args.workdir} is not empty: give a new folder")
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedmol-rounds-"))
    results = []
    for n_bits in args.n_bits:
        log(f"preparing {args.sites} sites of {args.rows} Tox21 rows, {n_bits} bits, in {workdir}")
        stores, tasks = make_sites(workdir / f"sites-{n_bits}", args.sites, args.rows, n_bits)
        results += [measure(label, workdir / f"{n_bits}-bits", stores, tasks, args, n_bits=n_bits, **kw)
                    for label, kw in CONFIGS.items() if not args.only or label in args.only]
    if not keep:  # measure() stops with the folder's path on a failure; it is only removed after a success
        shutil.rmtree(workdir, ignore_errors=True)
    report = {"settings": {k: str(v) for k, v in vars(args).items()}, "results": results,
              "load_average_1_5_15": os.getloadavg()}
    stem = "rounds_quick" if args.quick else "rounds"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    lines = ["| bits | configuration | median round wall (s) | median overhead (s) | round-1 overhead (s) | "
             "upload / site / round (MB) | upload / trunk | download / site / round (MB) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['n_bits']} | {r['label']} | {_fmt(r['median_wall_s_after_round_1'], '.1f')} "
                     f"| {_fmt(r['median_overhead_s_after_round_1'], '.1f')} "
                     f"| {_fmt(r['first_round_overhead_s'], '.1f')} "
                     f"| {_fmt(_mb(r['bytes_per_site_per_round']), '.2f')} "
                     f"| {_fmt(r['upload_over_trunk'], '.2f')} "
                     f"| {_fmt(_mb(r.get('download_bytes_per_site_per_round')), '.2f')} |")
    title = (f"# Round overhead, {args.sites} sites, {' and '.join(map(str, args.n_bits))} bits, hidden {args.hidden}"
             f"{' (quick smoke run, not a result)' if args.quick else ''}\n\n"
             f"Load average at the end (1/5/15 min, 2 cores): {', '.join(f'{x:.1f}' for x in os.getloadavg())}\n\n")
    text = title + "\n".join(lines) + "\n"
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return report


def _mb(n_bytes: float | None) -> float | None:
    return None if n_bytes is None else n_bytes / 1e6


def _fmt(value: float | None, spec: str) -> str:
    """``value`` formatted, or "–" where there is none (one round has no "after round 1")."""
    return "–" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
