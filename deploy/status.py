"""`fedmol consortium status`: a federation's progress per site, read from its MLflow run.

Everything shown comes from what the server's tracker logs (`fedmol.server.tracking.MlflowTracker`),
on an MLflow sqlite store or an MLflow tracking server alike:

* per site, from the metrics ``site/<site>/...``: the last round it trained in (the highest step of its
  non-final metrics), its validation score (``site/<site>/valid_score``, the mean ROC-AUC / R² over its
  scored tasks, with ``valid_roc_auc`` and ``valid_r2`` apart and the round it was evaluated at), its
  validation loss (``site/<site>/evaluate/valid-loss``) and when the server last logged a reply of it
  (the metrics' timestamps);
* rejected updates per site from the tags ``fedmol.rejected.round-<r>`` ("site: reason; ..."), rounds it
  was sampled but did not answer from ``fedmol.missing.round-<r>.<phase>``;
* the round (tag ``fedmol.last-round``), the time per round (metric ``round-wall-seconds``), and, while
  the run is RUNNING, an estimate of the time left: the rounds left up to ``num-server-rounds`` times
  the median round time (``patience`` may stop the federation sooner);
* a link to the run: ``<uri>/#/experiments/<id>/runs/<id>`` for a tracking server, the command that
  serves the UI for a sqlite store.

`watch` refreshes the view (rich Live) until the run is no longer RUNNING.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fedmol.errors import InputError

ROUND_SECONDS = "round-wall-seconds"  # fedmol.server.tracking: per train aggregation, step = round
FEDERATED_SCORE = "federated-valid-score"
MAX_ROUNDS_TAG = "fedmol.max-rounds"  # fedmol.server.tracking: the most rounds of the run
_REJECTED = re.compile(r"^fedmol\.rejected\.round-(\d+)$")
_MISSING = re.compile(r"^fedmol\.missing\.round-(\d+)\.\w+$")


@dataclass
class SiteRow:
    """One site's line of the status table."""

    site: str
    round: int | None = None  # the last round the site's reply was logged at (final evaluation aside)
    valid_score: float | None = None
    valid_round: int | None = None  # the round whose model that validation score is of
    roc_auc: float | None = None
    r2: float | None = None
    valid_loss: float | None = None
    final_valid_score: float | None = None  # the chosen model's, after the rounds (personalised at the site)
    last_heard_ms: int | None = None
    rejected: int = 0
    missed: int = 0


@dataclass
class FederationStatus:
    """One read of a federation's MLflow run."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    run_name: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    start_ms: int | None
    end_ms: int | None
    federation_id: str = ""
    last_round: int | None = None
    max_rounds: int | None = None
    patience: int | None = None
    round_seconds: list[float] = field(default_factory=list)  # in round order
    federated_valid_score: float | None = None
    best_round: str = ""  # tag fedmol.best-round: set when the rounds are over
    best_so_far: tuple[int, float] | None = None  # (round, federated validation score), from its history
    stop_reason: str = ""
    sites: list[SiteRow] = field(default_factory=list)
    rejections: list[tuple[int, str]] = field(default_factory=list)  # (round, the tag's text)
    rejected_total: int = 0  # rejected updates, every round and site

    @property
    def running(self) -> bool:
        return self.status == "RUNNING"

    @property
    def link(self) -> str:
        """The run's page in the MLflow UI (for a sqlite store: where `mlflow ui` serves it)."""
        return run_link(self.tracking_uri, self.experiment_id, self.run_id)

    @property
    def median_round_seconds(self) -> float | None:
        return statistics.median(self.round_seconds) if self.round_seconds else None

    def eta_seconds(self) -> float | None:
        """Seconds left if every round left up to num-server-rounds takes the median round time."""
        median, left = self.median_round_seconds, self.rounds_left
        if not self.running or median is None or left is None:
            return None
        return left * median

    @property
    def rounds_left(self) -> int | None:
        if self.max_rounds is None:
            return None
        return max(self.max_rounds - (self.last_round or 0), 0)


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """``<uri>/#/experiments/<exp>/runs/<run>`` for an http(s) tracking server; for a local store the
    same page as `mlflow ui` serves it on its default address."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_hint(uri: str) -> str:
    """How to open the link: nothing for a tracking server, `mlflow ui` for a local store."""
    return "" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"


def client_for(uri: str) -> Any:
    """An MlflowClient for ``uri``, refusing a sqlite store that does not exist (MLflow would create it)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists():
            raise InputError(f"no MLflow store at {path}: no federation has started here yet "
                             "(or it logged elsewhere: pass --tracking-uri)")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def find_run(client: Any, run_id: str = "") -> Any:
    """The run to show: ``run_id``, else the federation run still RUNNING that started last, else the
    last one started (a resumed federation reopens its old run, so RUNNING goes first)."""
    if run_id:
        return client.get_run(run_id)
    from mlflow.entities import ViewType

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    runs = client.search_runs(experiments, filter_string="tags.`fedmol.kind` = 'federation'",
                              order_by=["attributes.start_time DESC"], max_results=50) if experiments else []
    if not runs:
        raise InputError(f"no federation run in the MLflow store {client.tracking_uri}: start one with "
                         "`fedmol consortium run ...`")
    return next((r for r in runs if r.info.status == "RUNNING"), runs[0])


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


_ENTRY = re.compile(r"(?:^|; )([\w.-]+): ")  # "site: reason; site: reason" (a reason may hold "; ")


def rejected_sites(text: str) -> list[str]:
    """The sites named in a ``fedmol.rejected.round-<r>`` tag, once per rejected update."""
    return _ENTRY.findall(text)


def read_status(client: Any, run_id: str) -> FederationStatus:
    """The federation's status from its MLflow run: one get_run and one metric history."""
    run = client.get_run(run_id)
    info, data = run.info, run.data
    tags, params = data.tags, data.params
    st = FederationStatus(
        tracking_uri=str(client.tracking_uri), experiment_id=str(info.experiment_id), run_id=info.run_id,
        run_name=info.run_name or "", status=str(info.status), start_ms=info.start_time, end_ms=info.end_time,
        federation_id=tags.get("fedmol.federation-id", ""), last_round=_int(tags.get("fedmol.last-round")),
        # A run of an older fedmol has no max-rounds tag: its most rounds were num-server-rounds.
        max_rounds=_int(tags.get(MAX_ROUNDS_TAG, params.get("num-server-rounds"))),
        patience=_int(params.get("patience")),
        federated_valid_score=data.metrics.get(FEDERATED_SCORE), best_round=tags.get("fedmol.best-round", ""),
        stop_reason=tags.get("fedmol.stop-reason", ""))
    history = client.get_metric_history(run_id, ROUND_SECONDS)
    st.round_seconds = [m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
    scores = {m.step: m.value for m in sorted(client.get_metric_history(run_id, FEDERATED_SCORE),
                                              key=lambda m: m.timestamp)}  # a resumed round: its last score
    if scores:  # the best round so far (ties: the earlier), as best-round selection ranks them
        st.best_so_far = max(sorted(scores.items()), key=lambda kv: kv[1])
    # RunData keeps the latest Metric objects (value, step, timestamp) of every key; rebuilt from the
    # value dict (no step, no time) should an MLflow version not keep them.
    metric_objs = getattr(data, "_metric_objs", None)
    if metric_objs is None:
        from mlflow.entities import Metric

        metric_objs = [Metric(k, v, 0, 0) for k, v in data.metrics.items()]
    rows: dict[str, SiteRow] = {}
    for m in metric_objs:
        parts = m.key.split("/")
        if len(parts) < 3 or parts[0] != "site":
            continue
        row = rows.setdefault(parts[1], SiteRow(parts[1]))
        rest = "/".join(parts[2:])
        if m.timestamp and (row.last_heard_ms is None or m.timestamp > row.last_heard_ms):
            row.last_heard_ms = int(m.timestamp)
        if rest == "final/valid_score":
            row.final_valid_score = m.value
            continue
        if rest.startswith("final/"):
            continue
        if row.round is None or m.step > row.round:
            row.round = int(m.step)
        if rest == "valid_score":
            row.valid_score, row.valid_round = m.value, int(m.step)
        elif rest == "valid_roc_auc":
            row.roc_auc = m.value
        elif rest == "valid_r2":
            row.r2 = m.value
        elif rest == "evaluate/valid-loss":
            row.valid_loss = m.value
    for key, value in tags.items():
        if (hit := _REJECTED.match(key)) is not None:
            st.rejections.append((int(hit.group(1)), value))
        elif (hit := _MISSING.match(key)) is not None:
            for site in filter(None, value.split(",")):
                rows.setdefault(site, SiteRow(site))
    for _, text in st.rejections:
        for site in rejected_sites(text):
            if site != "aggregate":  # secure aggregation: the whole sum was discarded (listed below the table)
                rows.setdefault(site, SiteRow(site)).rejected += 1
            st.rejected_total += 1
    for site, row in rows.items():
        row.missed = len({int(h.group(1)) for k, v in tags.items()
                          if (h := _MISSING.match(k)) is not None and site in v.split(",")})
    st.rejections.sort()
    st.sites = [rows[s] for s in sorted(rows)]
    return st


# -- rendering ---------------------------------------------------------------------------------

def duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 2 h 04 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _heard(ms: int | None, now: float) -> str:
    if ms is None:
        return "never"
    return f"{duration(now - ms / 1000).replace(' ', '')} ago"  # 12s ago, 3min05s ago


def progress_line(st: FederationStatus) -> str:
    """Round, time per round and, while the run is RUNNING, the time left."""
    of = f" of at most {st.max_rounds}" if st.max_rounds else ""
    parts = [f"round {st.last_round if st.last_round is not None else 0}{of}"]
    median = st.median_round_seconds
    if median is not None:
        parts.append(f"{median:.1f} s per round (median of {len(st.round_seconds)}; "
                     f"last {st.round_seconds[-1]:.1f} s)")
    eta, left = st.eta_seconds(), st.rounds_left
    if st.running and eta is not None and left:
        sooner = f"; patience {st.patience} may stop it sooner" if st.patience else ""
        parts.append(f"about {duration(eta)} left for {left} more round{'s' if left != 1 else ''}"
                     f" (at the median, before the final evaluation{sooner})")
    elif st.running and left == 0:
        parts.append("rounds done: the final evaluation is under way")
    return " · ".join(parts)


def _whole(text: str) -> Text:
    """A line that is folded, never cut, where the terminal is narrow (a link, a path)."""
    return Text(text, overflow="fold")


def render(st: FederationStatus, now: float | None = None) -> RenderableType:
    """The status as rich renderables: header, progress, per-site table, rejections, link."""
    now = time.time() if now is None else now
    colour = {"RUNNING": "green", "FINISHED": "cyan"}.get(st.status, "red")
    head = Text.assemble(("federation ", "bold"), (st.federation_id or "?", "bold"),
                         f"  MLflow run {st.run_name or st.run_id}  ", (st.status, f"bold {colour}"))
    if st.start_ms:
        end = st.end_ms / 1000 if st.end_ms and not st.running else now
        head.append(f" for {duration(end - st.start_ms / 1000).replace(' ', '')}")
    lines: list[RenderableType] = [head, Text(progress_line(st))]
    if st.federated_valid_score is not None:
        best = f"; best {st.best_so_far[1]:.4f} at round {st.best_so_far[0]}" if st.best_so_far else ""
        lines.append(Text(f"federated validation score {st.federated_valid_score:.4f} (latest){best}"))
    if st.stop_reason and not st.running:
        lines.append(Text(f"kept: {st.stop_reason}"))
    # Fits 80 columns with every column: short heads, no vertical rules. ROC-AUC (classification tasks),
    # R² (regression tasks) and final (the chosen model, after the rounds) only where some site has them.
    table = Table(title="sites", title_justify="left", box=None, padding=(0, 1), pad_edge=False,
                  header_style="bold underline")
    optional = {"ROC-AUC": lambda r: r.roc_auc, "R²": lambda r: r.r2, "final": lambda r: r.final_valid_score}
    shown = {name: get for name, get in optional.items() if any(get(r) is not None for r in st.sites)}
    metrics = [n for n in shown if n != "final"]
    columns = ["site", "round", "valid", *metrics, "loss", *(["final"] if "final" in shown else []),
               "rejected", "missed", "heard"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("site", "heard") else "right")
    for r in st.sites:
        score = _num(r.valid_score)
        if r.valid_score is not None and r.valid_round != r.round:
            score += f" r{r.valid_round}"  # the score is of an earlier round's model (evaluate-in-train)
        cells = [r.site, str(r.round) if r.round is not None else "-", score,
                 *[_num(shown[n](r)) for n in metrics], _num(r.valid_loss)]
        cells += [_num(r.final_valid_score)] if "final" in shown else []
        rejected = f"[red]{r.rejected}[/]" if r.rejected else "0"
        missed = f"[yellow]{r.missed}[/]" if r.missed else "0"
        table.add_row(*cells, rejected, missed, _heard(r.last_heard_ms, now))
    if st.sites:
        table.caption = ("valid: mean ROC-AUC / R² over the site's scored tasks (rN: of round N's model); "
                         "loss: validation loss; heard: last reply")
        table.caption_justify = "left"
    lines.append(table if st.sites else Text("no site has answered yet", style="yellow"))
    lines.append(Text(f"rejected updates: {st.rejected_total}", style="red" if st.rejected_total else ""))
    for rnd, text in st.rejections[-5:]:
        lines.append(Text(f"  round {rnd}: {text[:300]}", style="red"))
    lines.append(_whole(f"run: {st.link}"))
    lines.append(_whole(f"tracking URI {st.tracking_uri}, experiment {st.experiment_id}, run {st.run_id}"))
    if hint := ui_hint(st.tracking_uri):
        lines.append(_whole(f"serve the UI with: {hint}"))
    return Group(*lines)


def watch(read: Callable[[], FederationStatus], *, interval: float, console: Console,
          max_updates: int | None = None, sleep: Callable[[float], None] = time.sleep) -> FederationStatus:
    """Show ``read()`` and refresh it every ``interval`` seconds until the run is no longer RUNNING
    (or after ``max_updates`` reads). A failed read (tracking server briefly away) keeps the last view
    with a warning and tries again."""
    st = read()
    updates = 1
    with Live(render(st), console=console, auto_refresh=False, redirect_stdout=False) as live:
        while st.running and (max_updates is None or updates < max_updates):
            sleep(interval)
            try:
                st = read()
                view: RenderableType = render(st)
            except Exception as exc:  # noqa: BLE001 - shown, then retried at the next interval
                view = Group(render(st), Text(f"could not read the run ({exc}); retrying every {interval:g} s",
                                              style="yellow"))
            updates += 1
            live.update(view, refresh=True)
    return st
