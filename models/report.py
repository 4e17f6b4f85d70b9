"""The federation-gain table: one metric, per approach ("local", "federated", "personalised",
"pooled", ...), per site, per task. Baselines write it; every federation writes one too (its sites'
local-only models beside the federated one: `fedmol.server.federation.write_federated_table`).

Means per site are taken over the tasks that *every* approach scored at that site (an approach
with no value at a site, such as "personalised" where the site kept the federated model, is left
out there), so approaches are compared on the same tasks (the count is shown). `GainTable.pairs`
counts the (site, task) pairs an approach won against local-only.

A ``score`` table holds ROC-AUC for classification tasks and R² for regression tasks; it records
which metric each (site, task) has (``task_metrics``), and when it holds both it is reported one
metric at a time (`GainTable.by_metric`): a mean of R² and ROC-AUC is not a number to compare.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedmol.errors import InputError

__all__ = ["GainTable"]


@dataclass
class GainTable:
    """values[approach][site][task] = metric value (higher is better unless ``higher_is_better``)."""

    dataset: str
    metric: str
    values: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    higher_is_better: bool = True
    task_metrics: dict[str, dict[str, str]] = field(default_factory=dict)  # site -> task -> "roc_auc" | "r2"

    # -- building --------------------------------------------------------------------------
    def add(self, approach: str, site: str, per_task: Mapping[str, float],
            metrics: Mapping[str, str] | None = None) -> None:
        """Record one approach's per-task values at one site (replaces earlier values of those tasks).

        ``metrics``: task -> the metric its value is (``roc_auc``, ``r2``), for a ``score`` table.
        """
        bucket = self.values.setdefault(approach, {}).setdefault(site, {})
        for task, value in per_task.items():
            if value is not None and math.isfinite(float(value)):
                bucket[task] = float(value)
        if metrics:
            self.task_metrics.setdefault(site, {}).update({t: str(m) for t, m in metrics.items() if t in per_task})

    @classmethod
    def from_site_metrics(
        cls,
        dataset: str,
        approach: str,
        rows: Mapping[str, Mapping[str, Mapping[str, float]]],
        metric: str = "roc_auc",
        notes: Mapping[str, Any] | None = None,
    ) -> GainTable:
        """A table from site -> task -> {metric name: value} (e.g. ``EvalResult.per_task`` per site).

        metric: which metric to keep; tasks without it are left out. ``score`` keeps ROC-AUC for
        classification tasks and R² for regression tasks (one number per task, as ``EvalResult.score``).
        """
        table = cls(dataset, metric, notes=dict(notes or {}))
        for site, tasks in rows.items():
            table.add(approach, site, {t: v for t, m in tasks.items() if (v := _pick(m, metric)) is not None},
                      metrics={t: _picked(m, metric) for t, m in tasks.items()})
        return table

    def merge(self, other: GainTable) -> GainTable:
        """A new table with both tables' values (``other`` wins on conflicts); same dataset and metric."""
        if (other.dataset, other.metric) != (self.dataset, self.metric):
            raise InputError(
                f"cannot merge a {other.metric} table of {other.dataset} into a {self.metric} table "
                f"of {self.dataset}"
            )
        merged = GainTable(self.dataset, self.metric, notes={**self.notes, **other.notes},
                           higher_is_better=self.higher_is_better)
        for table in (self, other):
            for approach, sites in table.values.items():
                for site, tasks in sites.items():
                    merged.add(approach, site, tasks, table.task_metrics.get(site))
        return merged

    @property
    def metrics(self) -> list[str]:
        """The metrics the table's values are: those recorded per task, else the table's ``metric``."""
        found = sorted({m for tasks in self.task_metrics.values() for m in tasks.values()})
        return found or [self.metric]

    @property
    def mixed(self) -> bool:
        """True when the values are of more than one metric (ROC-AUC and R² in a ``score`` table)."""
        return len(self.metrics) > 1

    def by_metric(self) -> dict[str, GainTable]:
        """One table per metric (a table of one metric: itself, by its ``metric``)."""
        if not self.mixed:
            return {self.metric: self}
        out: dict[str, GainTable] = {}
        for metric in self.metrics:
            sub = GainTable(self.dataset, metric, notes=dict(self.notes), higher_is_better=self.higher_is_better)
            for approach, sites in self.values.items():
                for site, tasks in sites.items():
                    kinds = self.task_metrics.get(site, {})
                    picked = {t: v for t, v in tasks.items() if kinds.get(t) == metric}
                    if picked:
                        sub.add(approach, site, picked, {t: metric for t in picked})
            out[metric] = sub
        return out

    # -- views -----------------------------------------------------------------------------
    @property
    def approaches(self) -> list[str]:
        order = ["local", "federated", "personalised", "pooled"]
        names = list(self.values)
        return sorted(names, key=lambda a: (order.index(a) if a in order else len(order), names.index(a)))

    @property
    def sites(self) -> list[str]:
        seen: list[str] = []
        for sites in self.values.values():
            seen += [s for s in sites if s not in seen]
        return seen

    def common_tasks(self, site: str) -> list[str]:
        """Tasks scored at ``site`` by every approach that has values there, in first-seen order."""
        per = [self.values[a][site] for a in self.approaches if site in self.values[a]]
        if not per:
            return []
        return [t for t in per[0] if all(t in p for p in per[1:])]

    def site_mean(self, approach: str, site: str) -> float:
        """Mean over the site's common tasks (NaN when there are none). In a mixed table that is a
        mean of per-task scores of different metrics: reports take `by_metric` instead."""
        if site not in self.values.get(approach, {}):
            return float("nan")
        tasks = self.common_tasks(site)
        vals = [self.values[approach][site][t] for t in tasks]
        return sum(vals) / len(vals) if vals else float("nan")

    def summary(self) -> dict[str, dict[str, float]]:
        """approach -> site -> mean over common tasks, plus ``mean_over_sites`` (see `site_mean` for a
        mixed table)."""
        out: dict[str, dict[str, float]] = {}
        for a in self.approaches:
            means = {s: self.site_mean(a, s) for s in self.sites}
            finite = [v for v in means.values() if math.isfinite(v)]
            means["mean_over_sites"] = sum(finite) / len(finite) if finite else float("nan")
            out[a] = means
        return out

    def pairs(self, approach: str = "federated", against: str = "local", *,
              fill_from: str | None = None, site: str | None = None) -> dict[str, int]:
        """(site, task) pairs both approaches scored: how many, and how many ``approach`` won, lost,
        tied against ``against``. ``fill_from``: the approach taken at a site where ``approach`` has
        no values (the sites' own models: "personalised" where chosen, else "federated"); ``site``:
        that site's pairs only."""
        won = lost = tied = 0
        ours = self.values.get(approach, {})
        fill = self.values.get(fill_from, {}) if fill_from else {}
        for name, theirs in self.values.get(against, {}).items():
            if site is not None and name != site:
                continue
            mine = ours.get(name, fill.get(name, {}))
            for task, b in theirs.items():
                if task not in mine:
                    continue
                a = mine[task] if self.higher_is_better else -mine[task]
                b = b if self.higher_is_better else -b
                won += a > b
                lost += a < b
                tied += a == b
        return {"pairs": won + lost + tied, "won": won, "lost": lost, "tied": tied}

    def pair_counts(self) -> dict[str, dict[str, int]]:
        """`pairs` of every approach against "local" (empty without local-only values); with
        "personalised", also "site model": personalised where a site chose it, else federated."""
        if "local" not in self.values:
            return {}
        out = {a: self.pairs(a) for a in self.approaches if a != "local"}
        if "personalised" in self.values and "federated" in self.values:
            out["site model"] = self.pairs("personalised", fill_from="federated")
        return out

    def pairs_line(self) -> str:
        """One sentence on the pairs won against local-only ("" without local-only values)."""
        counts = self.pair_counts()
        parts = [f"{a} {c['won']}/{c['pairs']}" for a, c in counts.items() if c["pairs"]]
        if counts.get("site model", {}).get("pairs"):
            parts[-1] += " (personalised where a site chose it, else federated)"
        return ("(site, task) pairs won against local-only: " + ", ".join(parts)) if parts else ""

    # -- files -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Values, per-task metrics and the means: ``summary`` for a table of one metric,
        ``summary_by_metric`` (metric -> summary) instead for a mixed one."""
        def finite(table: GainTable) -> dict[str, dict[str, float | None]]:
            return {a: {s: (v if math.isfinite(v) else None) for s, v in sites.items()}
                    for a, sites in table.summary().items()}  # NaN is not JSON

        d: dict[str, Any] = {"dataset": self.dataset, "metric": self.metric,
                             "higher_is_better": self.higher_is_better, "notes": self.notes, "values": self.values,
                             "task_metrics": self.task_metrics, "pairs_against_local": self.pair_counts()}
        if self.mixed:
            d["summary_by_metric"] = {m: finite(t) for m, t in self.by_metric().items()}
        else:
            d["summary"] = finite(self)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GainTable:
        return cls(dataset=d["dataset"], metric=d["metric"], values={a: {s: dict(t) for s, t in v.items()}
                   for a, v in d.get("values", {}).items()}, notes=dict(d.get("notes", {})),
                   higher_is_better=bool(d.get("higher_is_better", True)),
                   task_metrics={s: dict(t) for s, t in d.get("task_metrics", {}).items()})

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> GainTable:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def markdown(self) -> str:
        """Overview (site means, approaches side by side) then one table per site (per task); a
        mixed table gives one such section per metric."""
        if self.mixed:
            return "\n".join(t.markdown() for t in self.by_metric().values())
        approaches = self.approaches
        lines = [f"# {self.metric} on {self.dataset}", ""]
        for key, value in self.notes.items():
            lines.append(f"- {key}: {value}")
        if self.notes:
            lines.append("")
        lines += ["## Mean per site (over tasks every approach scored)", ""]
        lines.append("| site | tasks | " + " | ".join(approaches) + " |")
        lines.append("|---|---:|" + "---:|" * len(approaches))
        summary = self.summary()
        for site in self.sites:
            cells = [_fmt(summary[a][site]) for a in approaches]
            lines.append(f"| {site} | {len(self.common_tasks(site))} | " + " | ".join(cells) + " |")
        cells = [self._overall(a, summary) for a in approaches]
        lines.append("| **mean over sites** | | " + " | ".join(f"**{c}**" for c in cells) + " |")
        if line := self.pairs_line():
            lines += ["", line + "."]
        for site in self.sites:
            lines += ["", f"## {site}", "", "| task | " + " | ".join(approaches) + " |",
                      "|---|" + "---:|" * len(approaches)]
            tasks: list[str] = []
            for a in approaches:
                tasks += [t for t in self.values[a].get(site, {}) if t not in tasks]
            for t in tasks:
                cells = [_fmt(self.values[a].get(site, {}).get(t, float("nan"))) for a in approaches]
                lines.append(f"| {t} | " + " | ".join(cells) + " |")
            cells = [_fmt(summary[a][site]) for a in approaches]
            lines.append("| **mean (common tasks)** | " + " | ".join(f"**{c}**" for c in cells) + " |")
        return "\n".join(lines) + "\n"

    def print(self, console: Console | None = None) -> None:
        """The per-site means as a rich table (approaches side by side)."""
        console = console or Console()
        if self.mixed:
            for sub in self.by_metric().values():
                sub.print(console)
            return
        summary = self.summary()
        table = Table(title=f"{self.metrics[0]} on {self.dataset} (mean over common tasks)")
        table.add_column("site")
        table.add_column("tasks", justify="right")
        for a in self.approaches:
            table.add_column(a, justify="right")
        won = "local" in self.values and "federated" in self.values
        if won:
            table.add_column("federated won", justify="right")
        for site in self.sites:
            cells = [_fmt(summary[a][site]) for a in self.approaches]
            if won:
                p = self.pairs(site=site)
                cells.append(f"{p['won']}/{p['pairs']}")
            table.add_row(site, str(len(self.common_tasks(site))), *cells)
        last = [self._overall(a, summary) for a in self.approaches]
        if won:
            p = self.pairs()
            last.append(f"{p['won']}/{p['pairs']}")
        table.add_row("mean over sites", "", *last, style="bold")
        console.print(table)
        if line := self.pairs_line():
            console.print(line)

    def _overall(self, approach: str, summary: dict[str, dict[str, float]]) -> str:
        """The mean over sites as text, saying over how many sites when the approach lacks some."""
        text = _fmt(summary[approach]["mean_over_sites"])
        n = sum(math.isfinite(summary[approach][s]) for s in self.sites)
        return text if n == len(self.sites) or n == 0 else f"{text} ({n} of {len(self.sites)} sites)"

    def to_markdown(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown())
        return path

    def plot(self, path: str | Path) -> Path | None:
        """The per-site means of every approach as bars, one panel per metric, in a PNG.

        Needs matplotlib (installed with mlflow); returns None, and writes nothing, without it or
        when no site has a scored task to draw (e.g. every test fold below `eval-min-labels`).
        """
        tables = [(metric, table) for metric, table in self.by_metric().items() if table.sites and table.approaches]
        if not tables:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        colours = {"local": "#9e9e9e", "federated": "#1f77b4", "personalised": "#ff7f0e", "pooled": "#2ca02c"}
        fig, axes = plt.subplots(1, len(tables), figsize=(max(5.0, 1.6 * len(self.sites) + 2) * len(tables), 4),
                                 squeeze=False)
        for ax, (metric, table) in zip(axes[0], tables, strict=True):
            summary, sites, approaches = table.summary(), table.sites, table.approaches
            width = 0.8 / max(len(approaches), 1)
            for k, a in enumerate(approaches):
                xs = [i + (k - (len(approaches) - 1) / 2) * width for i in range(len(sites))]
                ax.bar(xs, [summary[a][s] for s in sites], width, label=a, color=colours.get(a))
            ax.set_xticks(range(len(sites)), [f"{s}\n({len(table.common_tasks(s))} tasks)" for s in sites])
            ax.set_ylabel(f"mean test {metric}")
            finite = [v for a in approaches for s in sites if math.isfinite(v := summary[a][s])] or [0.0]
            low = min(0.5, min(finite) - 0.05) if metric == "roc_auc" else min(0.0, min(finite) - 0.05)
            ax.set_ylim(low, max(finite) + 0.08)
            p = table.pairs()
            ax.set_title(metric + (f"\nfederated won {p['won']} of {p['pairs']} (site, task) pairs against local-only"
                                   if p["pairs"] else ""), fontsize=9)
            ax.legend(loc="upper left", ncol=len(approaches), fontsize=8)
        fig.suptitle(f"{self.dataset}: mean test score per site", fontsize=10)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _fmt(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.3f}"


def _picked(metrics: Mapping[str, float], metric: str) -> str:
    """The name of the metric `_pick` takes."""
    return ("roc_auc" if "roc_auc" in metrics else "r2") if metric == "score" else metric


def _pick(metrics: Mapping[str, float], metric: str) -> float | None:
    if metric == "score":
        value = metrics.get("roc_auc", metrics.get("r2"))
    else:
        value = metrics.get(metric)
    return None if value is None else float(value)
