"""The federation-gain benchmark's results: means, pair counts, and the JSON, Markdown and plot it writes.

Per set and seed, the merged `fedmol.models.report.GainTable` (the federation's own table: local-only,
federated, personalised per site and task; plus the benchmark's pooled reference) gives the means
(`approach_means`, with the "site model": personalised where a site chose it, else federated) and the
(site, task) pairs each approach wins against local-only (`pair_stats`); `write_results` writes
``federation_gain.json`` / ``.md`` (summary, targets with each seed's verdict, the run config, the
baselines' recipes, then each table's Markdown) and ``.png`` (per-site means, `plot`).
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.common import json_default, log
from benchmarks.sets import RUN_KEYS

APPROACHES = ("local", "federated", "site model", "pooled")
FORMAT = 2  # of federation_gain.json: 2 = the defaults only, local-only from the federation's table


def approach_means(table: Any) -> dict[str, float]:
    """Mean over sites of local-only, federated, the site model and pooled in a merged GainTable (each
    site's mean over the tasks every approach scored there)."""
    summary = table.summary()
    nan = float("nan")
    out = {a: summary[a]["mean_over_sites"] if a in summary else nan for a in ("local", "federated", "pooled")}
    own = []
    for site in table.sites:
        personal = summary.get("personalised", {}).get(site, nan)
        v = personal if math.isfinite(personal) else summary.get("federated", {}).get(site, nan)
        if math.isfinite(v):
            own.append(v)
    out["site model"] = sum(own) / len(own) if own else nan
    return {a: out[a] for a in APPROACHES}


def pair_stats(table: Any) -> dict[str, dict[str, Any]]:
    """(site, task) pairs each approach and local-only both scored: how many, won, lost, tied, the
    share won (`GainTable.pairs`; "site model": personalised where a site chose it, else federated)."""
    counts = {"federated": table.pairs("federated"),
              "site model": table.pairs("personalised", fill_from="federated"),
              "pooled": table.pairs("pooled")}
    return {a: {**c, "share": c["won"] / c["pairs"] if c["pairs"] else float("nan")} for a, c in counts.items()}


def previous_results(out: Path, names: list[str], known: Iterable[str]) -> list[dict[str, Any]]:
    """The last full run's results in ``out`` of the ``known`` sets not run now (``--only``), to keep
    them; none from a file of another format (an older benchmark's per-set recipes)."""
    from fedmol.models.report import GainTable

    path = out / "federation_gain.json"
    if not path.exists():
        return []
    payload = json.loads(path.read_text())
    if payload.get("format") != FORMAT:
        log(f"{path}: results of an older benchmark (not the defaults only): the other sets are left out")
        return []
    kept = []
    for r in payload.get("sets", []):
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


def machine() -> str:
    """This machine in a few words: architecture, cores, GPU."""
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}"


def _short(value: Any) -> str:
    """A run-config value for a list line: a long task list as its count."""
    text = str(value)
    return f"<{text.count(',') + 1} tasks>" if len(text) > 60 and ":" in text else text


def _f(v: float | None, digits: int = 4) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def write_results(results: list[dict[str, Any]], out: Path, *, quick: bool, command: str, total: float,
                  code: str = "unknown") -> None:
    """``federation_gain[_quick].json`` / ``.md`` / ``.png`` in ``out`` from one result per set
    (``benchmarks.federation_gain.combine``)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = "federation_gain_quick" if quick else "federation_gain"
    tables = {(r["set"], run.get("seed", 0)): run.pop("_table") for r in results for run in runs_of(r)}
    where = machine()
    payload = {"format": FORMAT, "command": command, "total_seconds": total, "machine": where, "code": code,
               "sets": results}
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=json_default) + "\n")

    def pairs(p: dict[str, Any]) -> str:
        return f"{p['won']}/{p['pairs']} ({_f(p['share'] * 100, 0)}%)" if p["pairs"] else "–"

    def row(label: str, r: dict[str, Any], rounds: str) -> str:
        m, p = r["means"], r["pairs"]
        ratio = m["federated"] / m["pooled"] if m["pooled"] else float("nan")
        return (f"| {label} | {r['metric']} | {_f(m['local'])} | {_f(m['federated'])} | {_f(m['site model'])} | "
                f"{_f(m['pooled'])} | {_f(ratio, 3)} | {pairs(p['federated'])} | {pairs(p['site model'])} | "
                f"{rounds} | {r['seconds']['total'] / 60:.1f} min |")

    lines = [f"# Federation gain with the defaults{' (quick smoke test, not a result)' if quick else ''}", "",
             f"Command: `{command}`: {total / 60:.1f} min on {where}; code {code}.", "",
             "Every set runs the run config's defaults (fedmol/config.py at that commit): no set has a recipe "
             "or model size of its own (the run config is below). local-only and personalised come from the "
             "federation's own table (each site's cached local-only model); pooled is trained here with the "
             "same recipe selection on the validation fold. \"site model\": personalised where the site chose "
             "it, else federated. Means are over sites of each site's mean over the tasks every approach "
             "scored; pairs are (site, task) pairs won against local-only.", "",
             "With several seeds, a set's first row is the mean over its seeds (pairs summed) and the targets "
             "are judged on it.", "",
             "| set | metric | local-only | federated | site model | pooled | federated / pooled | "
             "pairs won: federated | pairs won: site model | best round / rounds run | run time |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        runs = runs_of(r)
        if len(runs) > 1:
            lines.append(row(f"{r['set']}, mean of seeds {', '.join(map(str, r['seeds']))}", r, ""))
        for run in runs:
            lines.append(row(f"{run['set']}, seed {run.get('seed', 0)}", run,
                             f"{run.get('best_round')} / {run.get('rounds_run')}"))
    lines += ["", "Targets (issue #12, on the mean over the seeds):", ""]
    for r in results:
        runs = runs_of(r)
        for t, ok in r["targets"].items():
            per_seed = ""
            if len(runs) > 1:
                per_seed = " (per seed: " + ", ".join(
                    f"{run['seed']} {'met' if run['targets'][t] else 'not met'}" for run in runs) + ")"
            lines.append(f"- {r['set']}: {t}: **{'met' if ok else 'NOT met'}**{per_seed}")
        if r.get("note"):
            lines.append(f"- {r['set']}: {r['note']}")
    all_runs = [run for r in results for run in runs_of(r)]
    if all_runs:
        first = all_runs[0]["run_config"]
        recipe = {k: v for k, v in first.items() if k not in RUN_KEYS}
        lines += ["", "Run config: the defaults"
                  + (" (--quick: fewer rounds and a small trunk)" if quick else "") + ", for every set:", "",
                  "`" + " ".join(f"{k}={v}" for k, v in recipe.items()) + "`", "",
                  "Set per set and seed (none is a recipe):", ""]
        for run in all_runs:
            lines.append(f"- {run['set']} seed {run.get('seed', 0)}: " + ", ".join(
                f"{k}={_short(v)}" for k, v in run.get("changed_from_defaults", {}).items()))
    lines += ["", "Baselines' recipes (each chosen on the validation fold from the same two; per site for "
              "local-only) and the server's choice of round:", ""]
    for run in all_runs:
        local = ", ".join(f"{s} {v.get('recipe')}" for s, v in (run.get("local_only") or {}).items())
        personal = ", ".join(run.get("personalised_sites") or []) or "none"
        lines.append(f"- {run['set']} seed {run.get('seed', 0)}: pooled {run.get('pooled_recipe')}; local-only "
                     f"{local}; personalised at {personal}; {run.get('stop_reason')}")
        v = run.get("server_final_means") or {}
        if v.get("test_federated_score") is not None:
            lines.append(f"  - server log, final evaluation (consortium mean of the sites' means over all their "
                         f"scored tasks): site model {_f(v.get('test_score'))}, shared model "
                         f"{_f(v.get('test_federated_score'))}")
        s = run["seconds"]
        lines.append(f"  - time: prepare {s['prepare']:.0f} s, pooled {s['pooled']:.0f} s, federation "
                     f"{s['federation']:.0f} s (with the sites' local-only models), total {s['total'] / 60:.1f} min")
    lines += ["", "How it was measured: `benchmarks/results/federation_gain_notes.md`.", ""]
    for run in all_runs:
        body = tables[(run["set"], run.get("seed", 0))].markdown()
        body = body.replace("\n# ", "\n## ").replace("\n## ", "\n### ")
        body = body.replace(f"# score on {run['set']}", f"## {run['metric']} on {run['set']} "
                            f"(seed {run.get('seed', 0)})", 1)
        lines += ["", body]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot(tables, all_runs, out / f"{stem}.png")
    log(f"results: {out / stem}.json / .md / .png")


def plot(tables: dict[tuple[str, int], Any], runs: list[dict[str, Any]], path: Path) -> None:
    """Per-site means of local-only, federated, the site model and pooled: one panel per set and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sets = list(dict.fromkeys(r["set"] for r in runs))
    ncols = max(sum(r["set"] == s for r in runs) for s in sets)
    fig, axes = plt.subplots(len(sets), ncols, figsize=(6 * ncols, 4 * len(sets)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    colours = {"local": "#9e9e9e", "federated": "#1f77b4", "site model": "#ff7f0e", "pooled": "#2ca02c"}
    width = 0.8 / len(APPROACHES)
    for s_i, name in enumerate(sets):
        for ax, r in zip(axes[s_i], [r for r in runs if r["set"] == name], strict=False):
            ax.set_visible(True)
            seed = r.get("seed", 0)
            table = tables[(name, seed)]
            summary = table.summary()
            sites = table.sites
            nan = float("nan")
            per_site = {a: [summary.get(a, {}).get(s, nan) for s in sites] for a in ("local", "federated", "pooled")}
            per_site["site model"] = [p if math.isfinite(p := summary.get("personalised", {}).get(s, nan))
                                      else summary["federated"][s] for s in sites]
            x = np.arange(len(sites))
            for k, a in enumerate(APPROACHES):
                ax.bar(x + (k - (len(APPROACHES) - 1) / 2) * width, per_site[a], width, label=a, color=colours[a])
            ax.set_xticks(x, [f"{s}\n({len(table.common_tasks(s))} tasks)" for s in sites])
            ax.set_ylabel(f"mean test {r['metric']}")
            finite = [v for vals in per_site.values() for v in vals if math.isfinite(v)] or [0.0]
            lo = min(finite)  # a tiny --quick split may score no task
            ax.set_ylim(min(0.5, lo - 0.05) if r["metric"] == "ROC-AUC" else min(0.0, lo - 0.05), max(finite) + 0.08)
            m = r["means"]
            ax.set_title(f"{name} seed {seed}: local {_f(m['local'], 3)}, fed {_f(m['federated'], 3)}, "
                         f"site {_f(m['site model'], 3)}, pooled {_f(m['pooled'], 3)}", fontsize=9)
            ax.legend(loc="upper left", ncol=4, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
