"""The site's outbox ledger (``<store>/outbox.jsonl``, written by `SiteNode.record_outbox`), shown.

Three views of the same lines: `compact_lines` (one line per reply, at most 80 columns: when, which
federation, round, phase, arrays, bytes and a digest of the arrays), `full_view` (every array's
name, shape, dtype, bytes and full sha256, with the metric and report keys; nothing cut) and the raw
JSON lines.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from fedmol.errors import InputError

WIDTH = 80
# time(14) federation(12) round(5) phase(8) arrays(6) bytes(9) digest(12), two spaces apart: 78 columns
_ROW = "{time:<14}  {fed:<12}  {rnd:>5}  {phase:<8}  {arrays:>6}  {size:>9}  {digest:<12}"


def read_ledger(store: Path) -> list[dict[str, Any]]:
    """The ledger's entries, oldest first; a line that is not JSON is named by its number."""
    path = Path(store) / "outbox.jsonl"
    if not path.exists():
        raise InputError(f"no outbox ledger at {path}: this site has not sent anything yet")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {number}: not a JSON object ({exc.msg})") from None
    return entries


def digest(entry: dict[str, Any]) -> str:
    """The sha256 of the arrays' sha256s in the order sent: one value per update ("" without arrays).

    Recompute it from ``--full`` or ``--json`` (or compare two sites' updates at a glance)."""
    arrays = entry.get("arrays") or []
    if not arrays:
        return ""
    return hashlib.sha256("".join(a["sha256"] for a in arrays).encode()).hexdigest()


def size(n: float) -> str:
    """Bytes, in the largest unit that keeps the number under 1,000: 812 B, 3.4 kB, 52.4 MB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def compact_lines(entries: list[dict[str, Any]]) -> list[str]:
    """A header, one line per reply (none longer than 80 columns) and a total."""
    lines = [_ROW.format(time="time", fed="federation", rnd="round", phase="phase", arrays="arrays",
                         size="bytes", digest="digest")]
    for e in entries:
        stamp = str(e.get("time", ""))  # 2026-12-01T10:22:01+0100 -> 12-01 10:22:01
        stamp = stamp[5:19].replace("T", " ") if len(stamp) >= 19 else stamp[:14]
        lines.append(_ROW.format(time=stamp, fed=str(e.get("federation_id", ""))[:12], rnd=str(e.get("round", "")),
                                 phase=str(e.get("phase", ""))[:8], arrays=str(len(e.get("arrays") or [])),
                                 size=size(float(e.get("bytes_total", 0))), digest=digest(e)[:12] or "-"))
    total = sum(float(e.get("bytes_total", 0)) for e in entries)
    feds = len({e.get("federation_id") for e in entries})
    lines.append(f"{len(entries)} replies, {feds} federation{'s' if feds != 1 else ''}, {size(total)} sent")
    return [line.rstrip() for line in lines]


def full_view(entries: list[dict[str, Any]], title: str) -> list[Text | Table]:
    """Per reply: a line that says which reply it is, a table of its arrays (name, shape, dtype, bytes,
    full sha256; train replies) and a line with the metric, report and task-metric names sent."""
    parts: list[Text | Table] = []
    for e in entries:
        arrays = e.get("arrays") or []
        parts.append(Text(f"{title}: round {e.get('round')} {e.get('phase')}, federation {e.get('federation_id')}, "
                          f"{e.get('time')}, {len(arrays)} arrays, {e.get('bytes_total', 0):,} bytes"
                          + (f", digest {digest(e)}" if arrays else ""), style="bold"))
        if arrays:
            table = Table()
            for col in ("array", "shape", "dtype", "bytes", "sha256"):
                table.add_column(col, no_wrap=True, justify="right" if col == "bytes" else "left")
            for a in arrays:
                table.add_row(a["name"], "x".join(map(str, a["shape"])) or "scalar", a["dtype"], f"{a['bytes']:,}",
                              a["sha256"])
            parts.append(table)
        parts.append(Text(f"  metrics: {', '.join(e.get('metric_names', [])) or '-'}; "
                          f"report: {', '.join(e.get('report_keys', [])) or '-'}; "
                          f"task metrics: {', '.join(e.get('task_metric_names', [])) or '-'}"))
        if "secure_aggregation" in e or "app" in e:  # ledgers since issue #14 (`fedmol.client.provenance`)
            app = e.get("app") or {}
            parts.append(Text(f"  secure aggregation: {'yes' if e.get('secure_aggregation') else 'no'}; "
                              f"transport: {e.get('transport', '-')}; fedmol {app.get('fedmol', '-')}, "
                              f"flwr {app.get('flwr', '-')}; run config {app.get('run_config_sha256') or '-'}; "
                              f"FAB {app.get('fab_hash') or 'not known to the site'}"))
    return parts


def print_full(entries: list[dict[str, Any]], title: str, console: Console) -> None:
    """`full_view`, as wide as it needs (a narrow terminal wraps the lines; nothing is folded or cut)."""
    parts = full_view(entries, title)
    needed = max([console.width] + [Measurement.get(console, console.options.update(width=100_000), p).maximum
                                    for p in parts])
    wide = Console(width=needed, file=console.file, force_terminal=console.is_terminal,
                   color_system=console.color_system)  # type: ignore[arg-type]
    for part in parts:
        wide.print(part)
