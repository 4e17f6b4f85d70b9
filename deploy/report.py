"""The end of a federation as an operator sees it: which round's model was kept, and the
federation-gain table, printed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def selection_line(outputs: Mapping[str, Any]) -> str | None:
    """The round whose model the federation kept, and why, in one line (the server's outputs:
    ``best_round``, ``rounds_run``, ``stop_reason``); None for outputs without them."""
    reason, best, ran = outputs.get("stop_reason"), outputs.get("best_round"), outputs.get("rounds_run")
    if reason is None and best is None and ran is None:
        return None
    kept = f"round {best}" if best is not None else "the last round"
    return f"Model kept: {kept} of {ran if ran is not None else '?'} rounds run ({reason or 'no reason recorded'})"


def print_gain_report(output_dir: Path, *, since: float = 0.0) -> Path | None:
    """Print the round kept and the federation-gain table of the federation that ended in
    ``output_dir`` (its ``last_federation.json``, written after ``since``); return the table's
    path (None: no table)."""
    from rich.console import Console

    from fedmol.models.report import GainTable

    console = Console()
    last = Path(output_dir) / "last_federation.json"
    if not last.exists() or last.stat().st_mtime < since:
        console.print(f"no federation-gain table: the server wrote no results in {output_dir}")
        return None
    outputs = json.loads(last.read_text())
    line = selection_line(outputs)
    if line:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if "table" not in outputs or not Path(outputs["table"]).exists():
        console.print("no federation-gain table: no site evaluated the final model")
        return None
    path = Path(outputs["table"])
    table = GainTable.from_json(path)
    console.print("[bold]Federation gain[/] (test fold; local = each site's own local-only model)")
    table.print(console)
    if "local" not in table.values:
        console.print("no local-only scores: the sites did not report any (local-baseline=false?)")
    console.print(f"table: {path} (.md and .png beside it); MLflow run {outputs.get('mlflow_run_id', '?')}")
    return path
