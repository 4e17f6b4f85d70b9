"""`fedmol site report`: the privacy evidence of one site, in one document for its legal team.

Built only from the site's own files, nothing sent and nothing asked of the server:

* the outbox ledger (``<store>/outbox.jsonl``, `fedmol.client.ledger.read_ledger`): what left the
  site, per federation and round (bytes, array names, shapes and dtypes, the metric names and
  report keys), and how (secure aggregation, the transport dtype, the fedmol and flwr versions,
  the run config's and the FAB's hashes: the fields `fedmol.client.site.outbox_provenance` adds;
  a ledger written before them says "unknown");
* the newest membership-inference audit (``<store>/privacy/audit-*.json``, `fedmol site audit`)
  with its plot;
* the per-compound DP budget spent (``<store>/privacy/dp-*.json``), per federation, with a plot of
  epsilon by round;
* the store's public preparation settings (`fedmol.client.site.public_settings`) and the time the
  report was made.

The document is first built as a list of blocks (`Heading`, `Para`, `Table`, `Image`), which
`markdown` and `html` render: the two formats say the same, and every value is escaped in one place.
Private task names appear only as the ledger has them: under their labels (``private:cla:0``) unless
the site chose to report them (node config ``report-task-names``), in which case they did leave.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmol.client.ledger import digest, read_ledger, size
from fedmol.errors import InputError

UNKNOWN = "unknown"
EPS = "{:.3f}"  # epsilons: 7.9996 must not read as 8
KIND_AUDIT, KIND_DP = "fedmol.site-audit", "fedmol.site-dp"


# -- blocks --------------------------------------------------------------------------------------------
@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    right: set[int] = field(default_factory=set)  # columns aligned right (numbers)


@dataclass
class Image:
    name: str  # file name beside a Markdown report
    alt: str
    png: bytes | None = None  # drawn here
    path: Path | None = None  # a file of the store (the audit's plot)

    def data(self) -> bytes:
        if self.png is not None:
            return self.png
        assert self.path is not None
        return self.path.read_bytes()


Block = Heading | Para | Table | Image


# -- the site's files ----------------------------------------------------------------------------------
def _read_json(path: Path, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != kind:
        found = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{path}: not a {kind} file (its \"kind\" is {found!r})")
    return data


def newest_audit(store: Path, federation: str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest audit of ``<store>/privacy/audit-*.json`` (its name holds its UTC time); with
    ``federation``, the newest of that federation or of none (an audit of the site's own models)."""
    for path in sorted((store / "privacy").glob("audit-*.json"), reverse=True):
        data = _read_json(path, KIND_AUDIT)
        if federation is None or data.get("federation_id") in (None, federation):
            return path, data
    return None


def dp_budgets(store: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Federation id -> its site DP budget file (``<store>/privacy/dp-*.json``)."""
    out = {}
    for path in sorted((store / "privacy").glob("dp-*.json")):
        data = _read_json(path, KIND_DP)
        out[str(data.get("federation_id", path.stem[3:]))] = (path, data)
    return out


def _site_settings(store: Path) -> dict[str, Any]:
    path = store / "settings.json"
    if not path.exists():
        raise InputError(f"{store} is not a site store (no settings.json): give the folder `fedmol prepare` wrote")
    return dict(json.loads(path.read_text()))


# -- what the ledger says ----------------------------------------------------------------------------
def _one(values: list[Any], render: Any = str) -> str:
    """One value, or each distinct value (in order of first appearance); "unknown" for a missing one."""
    seen: list[str] = []
    for v in values:
        text = UNKNOWN if v is None else render(v)
        if text not in seen:
            seen.append(text)
    return " / ".join(seen) if seen else UNKNOWN


def _yes_no(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else UNKNOWN


def _app(entry: dict[str, Any], key: str) -> Any:
    app = entry.get("app")
    if not isinstance(app, dict):
        return None
    value = app.get(key)
    return value if value is not None or key != "fab_hash" else "not known to the site"


def by_federation(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    feds: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        feds.setdefault(str(e.get("federation_id", "")), []).append(e)
    return feds


def round_rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    """Per round: the replies (phases), arrays sent, bytes, the update's digest."""
    rounds: dict[Any, list[dict[str, Any]]] = {}
    phases: dict[int, str] = {}
    latest = None
    for e in entries:
        rounds.setdefault(e.get("round"), []).append(e)
        rnd, phase = e.get("round"), str(e.get("phase", ""))
        # The final evaluation carries the round the server chose: an earlier one, or one evaluated already.
        earlier = isinstance(rnd, int) and isinstance(latest, int) and rnd < latest
        if phase == "evaluate" and (earlier or any(phases.get(id(x)) == "evaluate" for x in rounds[rnd][:-1])):
            phase = "evaluate (final)"
        phases[id(e)] = phase
        latest = max(latest, rnd) if isinstance(latest, int) and isinstance(rnd, int) else rnd
    rows = []
    for rnd, group in sorted(rounds.items(), key=lambda kv: (not isinstance(kv[0], int), kv[0])):
        n = sum(int(e.get("bytes_total", 0)) for e in group)
        rows.append([str(rnd), ", ".join(phases[id(e)] for e in group),
                     str(sum(len(e.get("arrays") or []) for e in group)), size(n), f"{n:,}",
                     ", ".join(digest(e)[:12] for e in group if e.get("arrays")) or "-",
                     _one([e.get("secure_aggregation") for e in group], _yes_no)])
    return rows


def array_rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    """Every array name that left, in the order first sent: shape, dtype, the rounds it was sent in, bytes."""
    arrays: dict[str, dict[str, Any]] = {}
    for e in entries:
        for a in e.get("arrays") or []:
            row = arrays.setdefault(a["name"], {"shapes": [], "dtypes": [], "rounds": [], "bytes": 0})
            for key, value in (("shapes", "x".join(map(str, a.get("shape", []))) or "scalar"),
                               ("dtypes", str(a.get("dtype", ""))), ("rounds", str(e.get("round")))):
                if value not in row[key]:
                    row[key].append(value)
            row["bytes"] += int(a.get("bytes", 0))
    return [[name, ", ".join(r["shapes"]), ", ".join(r["dtypes"]), _ranges(r["rounds"]), size(r["bytes"]),
             f"{r['bytes']:,}"] for name, r in arrays.items()]


def _ranges(rounds: list[str]) -> str:
    """1, 2, 3, 5 -> 1-3, 5."""
    try:
        nums = sorted({int(r) for r in rounds})
    except ValueError:
        return ", ".join(rounds)
    parts, start = [], None
    for i, n in enumerate(nums):
        start = n if start is None else start
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            parts.append(str(n) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


def _names(entries: list[dict[str, Any]], key: str) -> str:
    names: list[str] = []
    for e in entries:
        for n in e.get(key) or []:
            if n not in names:
                names.append(str(n))
    return ", ".join(names) or "-"


# -- plots -------------------------------------------------------------------------------------------
def _epsilon_plot(data: dict[str, Any]) -> bytes | None:
    """Epsilon spent by round, with the target; None without matplotlib or rounds."""
    rounds = [r for r in data.get("rounds") or [] if r.get("epsilon_spent") is not None]
    if not rounds:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot([r["round"] for r in rounds], [r["epsilon_spent"] for r in rounds], marker="o", label="spent")
    if data.get("target_epsilon") is not None:
        ax.axhline(float(data["target_epsilon"]), color="tab:red", linestyle="--", label="target")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds
    top = max([float(r["epsilon_spent"]) for r in rounds] + [float(data.get("target_epsilon") or 0.0)])
    ax.set_ylim(0, top * 1.15 or 1.0)
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon spent (cumulative)")
    ax.set_title(f"DP budget, federation {data.get('federation_id')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# -- the document ------------------------------------------------------------------------------------
def _num(value: Any, fmt: str = "{:.4g}") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return fmt.format(value)


def build(store: str | Path, federation: str | None = None, *, now: float | None = None) -> list[Block]:
    """The report's blocks, from ``store``'s own files (``federation``: only that federation)."""
    store = Path(store).expanduser().resolve()
    settings = _site_settings(store)
    site = str(settings.get("site_name") or store.name)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    try:
        entries = read_ledger(store)
    except InputError:
        entries = []
    feds = by_federation(entries)
    if federation is not None:
        if federation not in feds:
            known = ", ".join(feds) or "none: the ledger is empty or missing"
            raise InputError(f"federation {federation!r} is not in {store / 'outbox.jsonl'} (federations: {known})")
        feds = {federation: feds[federation]}
    budgets = dp_budgets(store)

    blocks: list[Block] = [
        Heading(f"Privacy report of site {site}", 1),
        Para(f"Made {created} by fedmol site report from the site's own files in {store}; nothing was sent "
             "to make it. It says what left the site (the outbox ledger, written as each reply was sent), "
             "how well an attacker holding the shared model can tell the site's training compounds from "
             "others (the membership-inference audit), the per-compound differential-privacy budget spent, "
             "and whether secure aggregation protected the site's updates."),
    ]
    # -- overview per federation
    blocks.append(Heading("Federations"))
    if not feds:
        blocks.append(Para(f"This site has sent nothing: no outbox ledger entries in {store / 'outbox.jsonl'}."))
    else:
        rows = []
        for fid, es in feds.items():
            n = sum(int(e.get("bytes_total", 0)) for e in es)
            rounds = {e.get("round") for e in es}
            rows.append([fid, str(es[0].get("time", "")), str(es[-1].get("time", "")), str(len(rounds)),
                         str(len(es)), size(n), f"{n:,}",
                         _one([e.get("secure_aggregation") for e in es], _yes_no),
                         _one([e.get("transport") for e in es]),
                         "yes" if fid in budgets else "no"])
        blocks.append(Table(["federation", "first reply", "last reply", "rounds", "replies", "sent", "bytes",
                             "secure aggregation", "transport", "per-compound DP"], rows, right={3, 4, 5, 6}))
        total = sum(int(e.get("bytes_total", 0)) for es in feds.values() for e in es)
        blocks.append(Para(f"In all: {sum(len(es) for es in feds.values())} replies, {size(total)} ({total:,} bytes) "
                           f"sent in {len(feds)} federation{'s' if len(feds) != 1 else ''}."))
        blocks.append(Para("Secure aggregation \"yes\": each training update left masked (Flower's SecAgg+), and "
                           "the server could only unmask the sum over the sites; evaluation metrics and the "
                           "reports travel unmasked either way. The bytes are those of the update as the site "
                           "handed it over (with secure aggregation: before SecAgg+ quantises and masks it; "
                           "the protocol's own messages travel in addition). \"unknown\": the ledger entries "
                           "were written by a fedmol that did not record it."))

    # -- what left, per federation
    for fid, es in feds.items():
        blocks.append(Heading(f"What left the site: federation {fid}"))
        blocks.append(Table(["round", "replies", "arrays", "sent", "bytes", "update digest", "secure aggregation"],
                            round_rows(es), right={2, 3, 4}))
        arrays = array_rows(es)
        if arrays:
            blocks.append(Para("Arrays sent (the shared model's parameters after local training; nothing "
                               "per compound):"))
            blocks.append(Table(["array", "shape", "dtype", "rounds", "sent in all", "bytes"], arrays,
                                right={4, 5}))
        blocks.append(Table(["what", "names sent"], [
            ["metrics", _names(es, "metric_names")],
            ["report keys", _names(es, "report_keys")],
            ["task metrics", _names(es, "task_metric_names")],
        ]))
        blocks.append(Table(["app", "value"], [
            ["fedmol", _one([_app(e, "fedmol") for e in es])],
            ["flwr", _one([_app(e, "flwr") for e in es])],
            ["run config", _one([_app(e, "run_config_sha256") for e in es])],
            ["FAB hash", _one([_app(e, "fab_hash") for e in es])],
            ["transport", _one([e.get("transport") for e in es])],
        ]))

    # -- the audit
    blocks.append(Heading("Membership-inference audit"))
    audit = newest_audit(store, federation)
    if audit is None:
        blocks.append(Para(f"no audit run yet: fedmol site audit {store}"))
    else:
        blocks.extend(_audit_blocks(*audit))

    # -- DP
    blocks.append(Heading("Per-compound differential privacy"))
    for fid in feds or {f: [] for f in budgets}:
        if fid not in budgets:
            blocks.extend(_ledger_dp_blocks(fid, feds.get(fid, [])))
            continue
        blocks.extend(_dp_blocks(*budgets[fid]))
    if not feds and not budgets:
        blocks.append(Para("no per-compound DP budget file in this store"))

    # -- the store
    from fedmol.client.site import public_settings

    blocks.append(Heading("The site store"))
    public = public_settings(settings)
    blocks.append(Table(["preparation setting", "value"],
                        [[k, json.dumps(v, sort_keys=True, default=str)] for k, v in sorted(public.items())]))
    blocks.append(Para(f"Report made {created}."))
    return blocks


def _audit_blocks(path: Path, data: dict[str, Any]) -> list[Block]:
    out: list[Block] = [Para(
        f"Newest audit: {path.name}, made {data.get('created', UNKNOWN)}, federation "
        f"{data.get('federation_id') or 'none (the site alone)'}. Members: {data.get('members', UNKNOWN)}; "
        f"non-members: {data.get('nonmembers', UNKNOWN)}. An attack ROC-AUC of 0.5 means the attacker does "
        "no better than a coin; the TPR at a low FPR says how many training compounds it finds when it may "
        "wrongly accuse only 1 % (0.1 %) of the others.")]
    sources = data.get("sources")
    if isinstance(sources, dict) and sources:  # beyond the contract: what the audit examined, where given
        out.append(Para("Models audited: " + "; ".join(f"{k}: {v if v is not None else 'none'}"
                                                        for k, v in sources.items()) + "."))
    rows = []
    for model, m in (data.get("models") or {}).items():
        if not m:
            rows.append([model, "-", "not audited", "", "", "", ""])
            continue
        for attack, a in (m.get("attacks") or {}).items():
            if not a:
                rows.append([model, attack, "not run", "", "", "", ""])
                continue
            rows.append([model, attack, _num(a.get("auc"), "{:.3f}"), _num(a.get("tpr_at_1pct_fpr"), "{:.3f}"),
                         _num(a.get("tpr_at_0.1pct_fpr"), "{:.3f}"), _num(a.get("n_members"), "{:,}"),
                         _num(a.get("n_nonmembers"), "{:,}")])
    out.append(Table(["model", "attack", "ROC-AUC", "TPR at 1 % FPR", "TPR at 0.1 % FPR", "members", "non-members"],
                     rows, right={2, 3, 4, 5, 6}))
    canaries = data.get("canaries")
    if canaries:
        out.append(Para(f"Canaries: {canaries.get('n')} random molecules with random labels in a local training "
                        f"copy: mean exposure {_num(canaries.get('mean_exposure'), '{:.2f}')}, max "
                        f"{_num(canaries.get('max_exposure'), '{:.2f}')} of at most "
                        f"{_num(canaries.get('max_possible_exposure'), '{:.2f}')} (reference set of "
                        f"{_num(canaries.get('reference_size'), '{:,}')})."))
    else:
        out.append(Para("Canaries: none inserted in this audit (fedmol site audit --canaries N)."))
    plot = data.get("plot")
    if plot:
        png = Path(str(plot))
        png = png if png.is_absolute() else path.parent / png
        if png.is_file():
            out.append(Image(f"audit-{png.name}", "membership-inference audit: ROC curves", path=png))
        else:
            out.append(Para(f"The audit's plot {png} is missing."))
    return out


def _ledger_dp_blocks(fid: str, entries: list[dict[str, Any]]) -> list[Block]:
    """Without a budget file: what the ledger's train entries say of DP (their "dp" field), if anything."""
    rounds = [(e.get("round"), e["dp"]) for e in entries if e.get("phase") == "train" and isinstance(e.get("dp"), dict)]
    if not rounds:
        return [Para(f"no per-compound DP in federation {fid}")]
    last = rounds[-1][1]
    return [Heading(f"Federation {fid}", 3),
            Para(f"No DP budget file for federation {fid} in this store; its ledger says: mechanism "
                 f"{last.get('mechanism', UNKNOWN)}, target epsilon {_num(last.get('target_epsilon'), EPS)}, "
                 f"delta {_num(last.get('delta'), '{:.3g}')}, epsilon spent {_num(last.get('epsilon_spent'), EPS)} "
                 f"after round {rounds[-1][0]}."),
            Table(["round", "epsilon spent"], [[str(r), _num(d.get("epsilon_spent"), EPS)] for r, d in rounds],
                  right={0, 1})]


def _dp_blocks(path: Path, data: dict[str, Any]) -> list[Block]:
    fid = data.get("federation_id")
    spent, target = data.get("epsilon_spent"), data.get("target_epsilon")
    out: list[Block] = [Heading(f"Federation {fid}", 3), Table(["setting", "value"], [
        ["mechanism", str(data.get("mechanism", UNKNOWN))],
        ["target epsilon", _num(target, EPS)],
        ["delta", _num(data.get("delta"), "{:.3g}")],
        ["epsilon spent", _num(spent, EPS)],
        ["noise multiplier", _num(data.get("noise_multiplier"))],
        ["max gradient norm (clip)", _num(data.get("max_grad_norm"))],
        ["sample rate", _num(data.get("sample_rate"))],
        ["accountant", str(data.get("accountant", UNKNOWN))],
    ])]
    out.append(Para(f"(epsilon, delta) = ({_num(spent, EPS)}, {_num(data.get('delta'), '{:.3g}')}) spent of a "
                    f"target epsilon {_num(target, EPS)}: each training compound of the site is protected with "
                    "this guarantee over every model update the site sent in the federation (the aggregate "
                    f"metrics in its replies, such as its training loss, are outside the accounting) ({path.name})."))
    rounds = data.get("rounds") or []
    if rounds:
        out.append(Table(["round", "DP steps", "epsilon spent"],
                         [[str(r.get("round")), _num(r.get("steps"), "{:,}"), _num(r.get("epsilon_spent"), EPS)]
                          for r in rounds], right={0, 1, 2}))
    png = _epsilon_plot(data)
    if png is not None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(fid))
        out.append(Image(f"dp-{safe}.png", f"epsilon spent by round, federation {fid}", png=png))
    return out


# -- rendering ---------------------------------------------------------------------------------------
def _md(text: str) -> str:
    """Markdown text that renders as written: HTML's specials escaped, table and emphasis marks too."""
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*|\[\]])", r"\\\1", text)


def markdown(blocks: list[Block], out: Path | None = None) -> str:
    """Markdown; images are copied beside ``out`` (``<out stem>-<name>``) and linked relatively, or, on
    stdout (no ``out``), the audit's plot is linked where it lies and drawn plots are left out."""
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + _md(b.text), ""]
        elif isinstance(b, Para):
            lines += [_md(b.text), ""]
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(_md(h) for h in b.headers) + " |")
            lines.append("|" + "|".join("---:" if i in b.right else "---" for i in range(len(b.headers))) + "|")
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Image):
            if out is not None:
                target = out.parent / f"{out.stem}-{b.name}"
                if b.path is not None:
                    shutil.copyfile(b.path, target)
                else:
                    target.write_bytes(b.data())
                lines += [f"![{_md(b.alt)}]({target.name})", ""]
            elif b.path is not None:
                lines += [f"![{_md(b.alt)}](<{b.path.as_posix()}>)", ""]
            else:
                lines += [_md(f"({b.alt}: a plot, in the report written with --out FILE or --format html)"), ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:72rem;margin:2rem auto;
padding:0 1rem;color:#1b1b1b;line-height:1.45}h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;
border-bottom:1px solid #ddd}h3{font-size:1.05rem}table{border-collapse:collapse;margin:.6rem 0 1rem}
th,td{border:1px solid #ccc;padding:.25rem .55rem;vertical-align:top;font-size:.9rem}th{background:#f2f2f2;
text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}td{word-break:break-word}
img{max-width:100%;border:1px solid #eee}"""


def html_document(blocks: list[Block]) -> str:
    """One self-contained HTML page: inline CSS, images inline as base64 PNG, every value escaped."""
    e = html.escape
    title = next((b.text for b in blocks if isinstance(b, Heading)), "Privacy report")
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td class=\"n\">{e(c)}</td>" if i in b.right else f"<td>{e(c)}</td>"
                                            for i, c in enumerate(row)) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.data()).decode("ascii")
            body.append(f"<p><img alt=\"{e(b.alt)}\" src=\"data:image/png;base64,{data}\"></p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(store: str | Path, *, out: Path | None = None, fmt: str = "md",
                 federation: str | None = None) -> str:
    """The report as text (also written to ``out`` when given)."""
    if fmt not in ("md", "html"):
        raise InputError(f"--format {fmt!r}: use md or html")
    blocks = build(store, federation)
    if out is not None:
        out = Path(out).expanduser().resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(blocks, out) if fmt == "md" else html_document(blocks)
    if out is not None:
        out.write_text(text, encoding="utf-8")
    return text
