"""The federation-gain benchmark's results: pair counts, and the JSON, Markdown and plot it writes.

Per set and seed, the merged `fedmol.models.report.GainTable` (local-only, federated, pooled per
site and task) gives the means (`approach_means`) and the (site, task) pairs where federated beats
local-only (`pair_stats`); `write_results` writes ``federation_gain.json`` / ``.md`` (summary,
targets, baseline recipes, then each table's Markdown) and ``.png`` (per-site means, `plot`).
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.common import json_default, log


def pair_stats(table: Any) -> dict[str, Any]:
    """(site, task) pairs every approach scored: how many, and where federated beats local-only."""
    won = lost = tied = 0
    for site in table.sites:
        for task in table.common_tasks(site):
            f, l_ = table.values["federated"][site][task], table.values["local"][site][task]
            won += f > l_
            lost += f < l_
            tied += f == l_
    n = won + lost + tied
    return {"pairs": n, "federated_wins": won, "local_wins": lost, "ties": tied,
            "share_federated_wins": won / n if n else float("nan")}


def approach_means(table: Any) -> dict[str, float]:
    """Mean over sites of local-only, federated and pooled in a merged GainTable."""
    summary = table.summary()
    return {a: summary[a]["mean_over_sites"] for a in ("local", "federated", "pooled")}


def previous_results(out: Path, names: list[str], known: Iterable[str]) -> list[dict[str, Any]]:
    """The last full run's results in ``out`` of the ``known`` sets not run now (``--only``), to keep them."""
    from fedmol.models.report import GainTable

    path = out / "federation_gain.json"
    if not path.exists():
        return []
    kept = []
    for r in json.loads(path.read_text()).get("sets", []):
        if r.get("set") in names or r.get("set") not in known:
            continue
        for run in runs_of(r):
            run["_table"] = GainTable.from_dict(run["table"])
        r.setdefault("note", "from an earlier run (this run used --only)")
        kept.append(r)
    return kept


def runs_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A set's runs: one per seed (a single-seed result is its own run)."""
    return result.get("runs") or [result]


def write_results(results: list[dict[str, Any]], out: Path, *, quick: bool, command: str, total: float) -> None:
    """``federation_gain[_quick].json`` / ``.md`` / ``.png`` in ``out`` from one result per set
    (``benchmarks.federation_gain.combine``)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = "federation_gain_quick" if quick else "federation_gain"
    tables = {(r["set"], run.get("seed", 0)): run.pop("_table") for r in results for run in runs_of(r)}
    payload = {"command": command, "total_seconds": total, "machine": f"{platform.machine()}, "
               f"{platform.python_version()}", "sets": results}
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=json_default) + "\n")

    def row(label: str, r: dict[str, Any], seconds: str) -> str:
        m, p = r["means"], r["pairs"]
        ratio = m["federated"] / m["pooled"] if m["pooled"] else float("nan")
        return (f"| {label} | {r['metric']} | {m['local']:.4f} | {m['federated']:.4f} | {m['pooled']:.4f} | "
                f"{ratio:.3f} | {p['federated_wins']}/{p['pairs']} ({p['share_federated_wins']:.0%}) | {seconds} |")

    lines = [f"# Federation gain{' (quick smoke test, not a result)' if quick else ''}", "",
             f"Command: `{command}` — {total / 60:.1f} min on {platform.machine()} "
             "(2 cores, no GPU).", "",
             "Baselines: per approach, the recipe with the better validation-fold mean (see the notes).",
             "With several seeds, a set's first row is the mean over its seeds (pairs summed) and the targets "
             "are judged on it.", "",
             "| set | metric | local-only | federated | pooled | federated / pooled | pairs won by federated | "
             "run time |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        runs = runs_of(r)
        if len(runs) > 1:
            lines.append(row(f"{r['set']}, mean of seeds {', '.join(map(str, r['seeds']))}", r,
                             f"{r['seconds']['total'] / 60:.1f} min"))
        for run in runs:
            lines.append(row(f"{run['set']}, seed {run.get('seed', 0)}", run,
                             f"{run['seconds']['total'] / 60:.1f} min"))
    lines += ["", "Targets:", ""]
    for r in results:
        runs = runs_of(r)
        for t, ok in r["targets"].items():
            per_seed = ""
            if len(runs) > 1:
                per_seed = " (per seed: " + ", ".join(
                    f"{run['seed']} {'met' if run['targets'][t] else 'not met'}" for run in runs) + ")"
            lines.append(f"- {r['set']}: {t}: **{'met' if ok else 'NOT met'}**{per_seed}")
        strict = r.get("best_on_test_baselines")
        if strict:
            m = strict["means"]
            lines.append(f"- {r['set']}, against the baseline recipe that is better on the test fold (stricter; "
                         f"local {m['local']:.4f}, pooled {m['pooled']:.4f}): "
                         + ", ".join(f"{t} {'met' if ok else 'NOT met'}" for t, ok in strict["targets"].items()))
    lines += ["", "Baselines per recipe (mean over sites, test fold; validation fold in brackets):", ""]
    for r in results:
        for run in runs_of(r):
            val = run.get("baseline_recipes_validation", {})
            for rname, v in run["baseline_recipes"].items():
                vv = val.get(rname)
                vtext = f" [validation: local {vv['local']:.4f}, pooled {vv['pooled']:.4f}]" if vv else ""
                lines.append(f"- {run['set']} seed {run.get('seed', 0)} [{rname}]: local {v['local']:.4f}, "
                             f"pooled {v['pooled']:.4f}{vtext}")
    for r in results:
        if r.get("note"):
            lines.append(f"- {r['set']}: {r['note']}")
        for run in runs_of(r):
            v = run.get("federated_final_round_means") or {}
            if v.get("test_federated_score") is not None:
                lines.append(f"- {run['set']} seed {run.get('seed', 0)}: final round, consortium mean of the sites' "
                             f"means over all their scored tasks (server log): personalised {v['test_score']:.4f}, "
                             f"federated model before fine-tuning {v['test_federated_score']:.4f}")
    lines += ["", "How it was measured: `benchmarks/results/federation_gain_notes.md`.", ""]
    for r in results:
        for run in runs_of(r):
            body = tables[(run["set"], run.get("seed", 0))].markdown()
            body = body.replace("\n# ", "\n## ").replace("\n## ", "\n### ")
            lines += ["", body.replace(f"# score on {run['set']}",
                                       f"## {run['metric']} on {run['set']} (seed {run.get('seed', 0)})", 1)]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot(tables, [run for r in results for run in runs_of(r)], out / f"{stem}.png")
    log(f"results: {out / stem}.json / .md / .png")


def plot(tables: dict[tuple[str, int], Any], runs: list[dict[str, Any]], path: Path) -> None:
    """Per-site means of local-only, federated and pooled: one panel per set and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sets = list(dict.fromkeys(r["set"] for r in runs))
    ncols = max(sum(r["set"] == s for r in runs) for s in sets)
    fig, axes = plt.subplots(len(sets), ncols, figsize=(6 * ncols, 4 * len(sets)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    colours = {"local": "#9e9e9e", "federated": "#1f77b4", "pooled": "#2ca02c"}
    for s_i, name in enumerate(sets):
        for ax, r in zip(axes[s_i], [r for r in runs if r["set"] == name], strict=False):
            ax.set_visible(True)
            seed = r.get("seed", 0)
            table = tables[(name, seed)]
            summary = table.summary()
            sites = table.sites
            x = np.arange(len(sites))
            for k, a in enumerate(("local", "federated", "pooled")):
                ax.bar(x + (k - 1) * 0.27, [summary[a][s] for s in sites], 0.27, label=a, color=colours[a])
            ax.set_xticks(x, [f"{s}\n({len(table.common_tasks(s))} tasks)" for s in sites])
            ax.set_ylabel(f"mean test {r['metric']}")
            vals = [summary[a][s] for a in ("local", "federated", "pooled") for s in sites]
            finite = [v for v in vals if math.isfinite(v)] or [0.0]  # a tiny --quick split may score no task
            lo = min(finite)
            ax.set_ylim(min(0.5, lo - 0.05) if r["metric"] == "ROC-AUC" else min(0.0, lo - 0.05),
                        max(finite) + 0.08)
            m = r["means"]
            ax.set_title(f"{name} seed {seed}: local {m['local']:.3f}, fed {m['federated']:.3f}, "
                         f"pooled {m['pooled']:.3f}", fontsize=10)
            ax.legend(loc="upper left", ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
