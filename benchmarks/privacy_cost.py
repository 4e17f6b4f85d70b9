"""What privacy and transport options cost on Tox21: time per round, the federated ROC-AUC, and
what a membership-inference attack learns from the shared model.

    .venv/bin/python -m benchmarks.privacy_cost            # every variant: federations of ~4-10 min each
    .venv/bin/python -m benchmarks.privacy_cost --only int8 --only site-dp-eps-8   # some variants
    .venv/bin/python -m benchmarks.privacy_cost --quick    # smoke run: int8 and site-dp-eps-8 on 2,500 rows, 3 rounds

The Tox21 federation of `benchmarks/federation_gain.py` (4 scaffold sites, its model and
federation settings from `benchmarks.sets`, simulation engine, 1 CPU per virtual client), run
once per variant:

* ``float32``: ``transport-dtype=float32``, the update as it is;
* ``float16``: ``transport-dtype=float16`` (sites upload half the bytes; the server aggregates
  in float32);
* ``int8``: the default transport (the update in 8 bits with a float32 scale per row,
  zlib-compressed where that pays; `fedmol.transport`);
* ``secure-aggregation``: Flower's SecAgg+ (the server sees only the sum of the updates; four
  message round trips per round);
* ``central-dp-eps-8``: ``dp=server-fixed`` with a budget of epsilon 8 per site (Flower's
  server-side fixed clipping + Gaussian noise, the noise derived from the budget);
* ``site-dp-eps-1``, ``-3``, ``-8``: ``dp=site-dp-sgd``, per-compound DP-SGD at every site with
  that budget (delta 1e-5) for the whole federation: the privacy-utility curve;
* ``site-dp-eps-8-secagg``: the same at epsilon 8 with secure aggregation (the strongest setting).

``--only VARIANT`` reruns some variants and keeps the other rows of the previous results file.

Reported per variant: mean test ROC-AUC over sites (the federated column of federation_gain),
its change against int8 (the default), median seconds per round after round 1 (the server's
``round-wall-seconds``), bytes a site uploads per round (from the outbox ledgers), the epsilon the
sites spent (the maximum over sites), and the loss-threshold membership-inference attack against
the shared model each site received (`fedmol.client.audit`, training folds against the test fold;
ROC-AUC per site, the maximum reported; 0.5 is guessing). The int8 run also trains each site's
local-only model, the score a site gets without joining. Results: benchmarks/results/
privacy_cost.json and .md, and privacy_cost.png (ROC-AUC and attack AUC against epsilon, with the
local-only line). The machine may be shared: the ROC-AUC does not depend on load; the seconds do,
so compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DATA_DIR, RESULTS, log, quiet_warnings, run_flower
from benchmarks.sets import FEATURES, SETS, federation_config, prepared_store, save_sites, split_sites

VARIANTS: dict[str, dict[str, Any]] = {
    "float32": {"transport_dtype": "float32"},
    "float16": {"transport_dtype": "float16"},
    "int8": {"local_baseline": True},  # the defaults; and the local-only model each site gets alone
    "secure-aggregation": {"secure_aggregation": True},
    "central-dp-eps-8": {"dp": "server-fixed", "dp_epsilon": 8.0},
    "site-dp-eps-1": {"dp": "site-dp-sgd", "dp_epsilon": 1.0},
    "site-dp-eps-3": {"dp": "site-dp-sgd", "dp_epsilon": 3.0},
    "site-dp-eps-8": {"dp": "site-dp-sgd", "dp_epsilon": 8.0},
    "site-dp-eps-8-secagg": {"dp": "site-dp-sgd", "dp_epsilon": 8.0, "secure_aggregation": True},
}
REFERENCE = "int8"  # the default transport: the row the others are compared with
CURVE = ("site-dp-eps-1", "site-dp-eps-3", "site-dp-eps-8", "int8")  # epsilon 1, 3, 8, infinity
QUICK_VARIANTS = ("int8", "site-dp-eps-8")


def membership_auc(sites: dict[str, Path]) -> dict[str, float]:
    """Per site: the loss-threshold attack's ROC-AUC against the shared model the site received in
    the federation just run (its newest), training folds against the test fold; no LiRA (fast)."""
    from fedmol.client.audit import AuditSettings, run_audit

    out = {}
    for name, path in sites.items():
        report = run_audit(path, settings=AuditSettings(lira_models=0)).report
        out[name] = float(report["models"]["shared"]["attacks"]["loss"]["auc"])
    return out


def epsilon_spent(client: Any, run_id: str) -> float | None:
    """The federation's epsilon: the maximum over sites, as the server logged it last."""
    history = client.get_metric_history(run_id, "dp/epsilon-spent")
    return max((m.value for m in history), default=None)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: Tox21's quick slice (2,500 rows, 3 rounds), variants "
                        + " and ".join(QUICK_VARIANTS) + " unless --only says otherwise")
    p.add_argument("--only", choices=sorted(VARIANTS), action="append", help="run only this variant")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedmol-bench",
                   help="prepared-store cache, site stores, Flower and server outputs")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    args = p.parse_args(argv)
    if args.quick and not args.only:
        args.only = list(QUICK_VARIANTS)
    quiet_warnings()
    from mlflow.tracking import MlflowClient

    spec = SETS["tox21"]
    quick = spec["quick"] if args.quick else {}
    store = prepared_store(DATA_DIR / spec["file"], args.work, **FEATURES,
                           nrows=quick.get("nrows"), id_col=spec["id_col"])
    work = args.work / ("quick" if args.quick else "full") / "privacy-cost"
    sites = save_sites(split_sites(store, spec, 0), work / "sites")
    rows = []
    for name, change in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        out_dir = work / name
        shutil.rmtree(out_dir, ignore_errors=True)
        for path in sites.values():
            (path / "outbox.jsonl").unlink(missing_ok=True)
        cfg = federation_config("tox21", len(sites), work / "sites", out_dir / "server", quick=args.quick, seed=0,
                                experiment="bench-privacy-cost", run_name=name).replace(
            # the shared model's score is the result: no site model, no local-only baseline (but in `int8`)
            finetune_epochs=0, **{"local_baseline": False, **change})
        log(f"{name}: at most {cfg.max_rounds} rounds")
        t0 = time.perf_counter()
        run = run_flower(cfg, len(sites), out_dir, label=name)
        table = run.federated_table(name)
        summary = table.summary()
        auc = summary["federated"]["mean_over_sites"]
        local = summary["local"]["mean_over_sites"] if "local" in summary else None
        client = MlflowClient(run.outputs["tracking_uri"])
        walls = [m.value for m in sorted(client.get_metric_history(run.outputs["mlflow_run_id"], "round-wall-seconds"),
                                         key=lambda m: m.step)]
        uploads = [json.loads(line)["bytes_total"] for path in sites.values()
                   for line in (path / "outbox.jsonl").read_text().splitlines() if '"phase": "train"' in line]
        attack = membership_auc(sites)
        rows.append({"variant": name, "settings": change, "mean_test_roc_auc": auc,
                     "local_only_mean_test_roc_auc": local,
                     "epsilon_spent": epsilon_spent(client, run.outputs["mlflow_run_id"]),
                     "membership_loss_auc_per_site": attack, "membership_loss_auc_max": max(attack.values()),
                     "median_round_s_after_1": statistics.median(walls[1:]) if len(walls) > 1 else None,
                     "upload_bytes_per_site_round": statistics.median(uploads) if uploads else None,
                     "max_rounds": cfg.max_rounds, "rounds_run": run.outputs.get("rounds_run"),
                     "best_round": run.outputs.get("best_round"), "total_s": time.perf_counter() - t0})
        log(f"{name}: ROC-AUC {auc:.4f}, attack AUC max {max(attack.values()):.3f}, "
            f"{rows[-1]['median_round_s_after_1']:.2f} s/round")
    suffix = "_quick" if args.quick else ""
    previous = args.out / f"privacy_cost{suffix}.json"
    if args.only and previous.exists():  # keep the rows of the variants not rerun, in their order
        fresh = {r["variant"]: r for r in rows}
        old = [r for r in json.loads(previous.read_text()) if r["variant"] not in fresh and r["variant"] in VARIANTS]
        rows = sorted(old + rows, key=lambda r: list(VARIANTS).index(r["variant"]))
    ref = next((r["mean_test_roc_auc"] for r in rows if r["variant"] == REFERENCE), None)
    lines = [f"| variant | mean test ROC-AUC | change vs {REFERENCE} | epsilon spent | attack AUC (max over sites) | "
             "rounds (best / run / most) | s / round (median after round 1) | upload / site / round (MB) |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        delta = "" if ref is None else f"{r['mean_test_roc_auc'] - ref:+.4f}"
        eps = r.get("epsilon_spent")
        attack = r.get("membership_loss_auc_max")
        lines.append(f"| {r['variant']} | {r['mean_test_roc_auc']:.4f} | {delta} | "
                     f"{'–' if eps is None else f'{eps:.2f}'} | {'–' if attack is None else f'{attack:.3f}'} | "
                     f"{r.get('best_round', '–')} / {r.get('rounds_run', '–')} / {r.get('max_rounds', '–')} | "
                     f"{_num(r['median_round_s_after_1'], '.2f')} | {r['upload_bytes_per_site_round'] / 1e6:.2f} |")
    local = next((r.get("local_only_mean_test_roc_auc") for r in rows if r["variant"] == REFERENCE), None)
    text = (f"# Privacy and transport options on Tox21 ({len(sites)} sites, simulation)\n\n" + "\n".join(lines) + "\n"
            + ("" if local is None else f"\nLocal-only (each site alone, no DP), mean test ROC-AUC: {local:.4f}\n"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"privacy_cost{suffix}.json").write_text(json.dumps(rows, indent=2))
    (args.out / f"privacy_cost{suffix}.md").write_text(text)
    plot_curve(rows, args.out / f"privacy_cost{suffix}.png")
    print(text)
    return {"rows": rows}


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def plot_curve(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Federated ROC-AUC and the attack's AUC against epsilon (1, 3, 8, and infinity: no DP), with
    the local-only ROC-AUC as the line to stay above; None when fewer than two curve points ran."""
    points = [(r, 1e3 if r["variant"] == REFERENCE else float(r["settings"]["dp_epsilon"]))
              for name in CURVE for r in rows if r["variant"] == name]
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [x for _, x in points]
    ax.plot(xs, [r["mean_test_roc_auc"] for r, _ in points], "o-", label="federated model: mean test ROC-AUC")
    ax.plot(xs, [r.get("membership_loss_auc_max", float("nan")) for r, _ in points], "s--",
            label="membership attack on it: ROC-AUC (max over sites)")
    local = next((r.get("local_only_mean_test_roc_auc") for r, _ in points if r["variant"] == REFERENCE), None)
    if local is not None:
        ax.axhline(local, color="grey", linestyle=":", label="local-only, no DP (a site alone)")
    ax.axhline(0.5, color="black", linewidth=0.5)
    ax.set_xscale("log")
    ax.set_xticks(xs, [("∞" if x >= 1e3 else f"{x:g}") for x in xs])
    ax.set_xlabel("epsilon per site for the whole federation (delta 1e-5)")
    ax.set_ylabel("ROC-AUC")
    ax.set_title("Tox21, 4 sites: per-compound DP-SGD at the sites", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
