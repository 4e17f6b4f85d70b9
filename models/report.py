"""The federation-gain table: one metric, per approach ("local", "pooled", "federated", ...),
per site, per task. Baselines write it; the federation merges its results into the same table.

Means per site are taken over the tasks that *every* approach in the table scored at that site,
so approaches are compared on the same tasks (the count is shown).
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

    # -- building --------------------------------------------------------------------------
    def add(self, approach: str, site: str, per_task: Mapping[str, float]) -> None:
        """Record one approach's per-task values at one site (replaces earlier values of those tasks)."""
        bucket = self.values.setdefault(approach, {}).setdefault(site, {})
        for task, value in per_task.items():
            if value is not None and math.isfinite(float(value)):
                bucket[task] = float(value)

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
            table.add(approach, site, {t: v for t, m in tasks.items()
                                       if (v := _pick(m, metric)) is not None})
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
                    merged.add(approach, site, tasks)
        return merged

    # -- views -----------------------------------------------------------------------------
    @property
    def approaches(self) -> list[str]:
        order = ["local", "federated", "pooled"]
        names = list(self.values)
        return sorted(names, key=lambda a: (order.index(a) if a in order else len(order), names.index(a)))

    @property
    def sites(self) -> list[str]:
        seen: list[str] = []
        for sites in self.values.values():
            seen += [s for s in sites if s not in seen]
        return seen

    def common_tasks(self, site: str) -> list[str]:
        """Tasks scored at ``site`` by every approach, in first-seen order."""
        per = [self.values[a].get(site, {}) for a in self.approaches]
        if not per:
            return []
        return [t for t in per[0] if all(t in p for p in per[1:])]

    def site_mean(self, approach: str, site: str) -> float:
        """Mean over the site's common tasks (NaN when there are none)."""
        tasks = self.common_tasks(site)
        vals = [self.values[approach][site][t] for t in tasks]
        return sum(vals) / len(vals) if vals else float("nan")

    def summary(self) -> dict[str, dict[str, float]]:
        """approach -> site -> mean over common tasks, plus ``mean_over_sites``."""
        out: dict[str, dict[str, float]] = {}
        for a in self.approaches:
            means = {s: self.site_mean(a, s) for s in self.sites}
            finite = [v for v in means.values() if math.isfinite(v)]
            means["mean_over_sites"] = sum(finite) / len(finite) if finite else float("nan")
            out[a] = means
        return out

    # -- files -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        summary = {a: {s: (v if math.isfinite(v) else None) for s, v in sites.items()}
                   for a, sites in self.summary().items()}  # NaN is not JSON
        return {"dataset": self.dataset, "metric": self.metric, "higher_is_better": self.higher_is_better,
                "notes": self.notes, "values": self.values, "summary": summary}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GainTable:
        return cls(dataset=d["dataset"], metric=d["metric"], values={a: {s: dict(t) for s, t in v.items()}
                   for a, v in d.get("values", {}).items()}, notes=dict(d.get("notes", {})),
                   higher_is_better=bool(d.get("higher_is_better", True)))

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> GainTable:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def markdown(self) -> str:
        """Overview (site means, approaches side by side) then one table per site (per task)."""
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
        cells = [_fmt(summary[a]["mean_over_sites"]) for a in approaches]
        lines.append("| **mean over sites** | | " + " | ".join(f"**{c}**" for c in cells) + " |")
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
        summary = self.summary()
        table = Table(title=f"{self.metric} on {self.dataset} (mean over common tasks)")
        table.add_column("site")
        table.add_column("tasks", justify="right")
        for a in self.approaches:
            table.add_column(a, justify="right")
        for site in self.sites:
            cells = [_fmt(summary[a][site]) for a in self.approaches]
            table.add_row(site, str(len(self.common_tasks(site))), *cells)
        table.add_row("mean over sites", "", *[_fmt(summary[a]["mean_over_sites"]) for a in self.approaches],
                      style="bold")
        console.print(table)

    def to_markdown(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown())
        return path


def _fmt(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.3f}"


def _pick(metrics: Mapping[str, float], metric: str) -> float | None:
    if metric == "score":
        value = metrics.get("roc_auc", metrics.get("r2"))
    else:
        value = metrics.get(metric)
    return None if value is None else float(value)
