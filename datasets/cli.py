"""Data commands: `fedmol keygen` and `fedmol prepare`.

Heavy imports (rdkit, pandas, numpy) happen inside the commands so `fedmol --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args

import click
import typer

from fedmol.datasets.options import Layout, StereoMode

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `fedmol` app."""
    app.command("keygen")(keygen)
    app.command("prepare")(prepare)


def keygen(
    out: Annotated[Path, typer.Argument(help="Where to write the new key file (must not exist).")],
) -> None:
    """Create a consortium key file: 32 random bytes as hex, file mode 0600.

    One site creates it and shares it with every other site over a secure channel, never with the
    server. It decides the scrambling of feature positions and the scaffold folds, so all sites
    must prepare their data with the same key.

    Example: fedmol keygen consortium.key
    """
    from rich.console import Console

    from fedmol.datasets.keys import generate_key_file, key_fingerprint, load_key

    path = generate_key_file(out)
    Console().print(f"wrote {path} (mode 0600); key fingerprint {key_fingerprint(load_key(path))}. "
                    "Share it with the other sites, never with the server.")


def prepare(
    input: Annotated[Path | None, typer.Argument(
        help="CSV/TSV (wide or long), SDF or .smi file; .gz is read transparently.",
        show_default=False)] = None,
    key_file: Annotated[Path, typer.Option(
        "--key-file", "-k", help="Consortium key file (make one with fedmol keygen).")] = ...,  # type: ignore[assignment]
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder of the site store to write.")] = ...,  # type: ignore[assignment]
    embedded: Annotated[str | None, typer.Option(
        help="Prepare a demo set shipped with fedmol instead of INPUT: solubility or freesolv.")] = None,
    smiles_col: Annotated[str, typer.Option(help="Column holding the SMILES.")] = "smiles",
    id_col: Annotated[str | None, typer.Option(help="Column holding the compound id (optional).")] = None,
    task_cols: Annotated[str | None, typer.Option(
        help="Comma-separated label columns (wide format). Default: every other numeric column.")] = None,
    layout: Annotated[Layout, typer.Option("--format", click_type=click.Choice(get_args(Layout)),
                                           help="wide: one column per task; long: one row per (compound, "
                                                "task, value).")] = "wide",
    task_col: Annotated[str, typer.Option(help="Long format: the task-name column.")] = "task",
    value_col: Annotated[str, typer.Option(
        help="Long format: the value column (may hold '<5.2').")] = "value",
    qualifier_col: Annotated[str | None, typer.Option(
        help="Long format: a column of '<', '>' or '=' qualifiers.")] = None,
    threshold: Annotated[list[str] | None, typer.Option(
        help="TASK=VALUE: make a classification task, active if value >= VALUE. Repeatable.")] = None,
    radius: Annotated[int, typer.Option(help="Morgan/ECFP radius (3 = ECFP6).")] = 3,
    n_bits: Annotated[int, typer.Option(help="Fingerprint length after folding.")] = 32768,
    counts: Annotated[bool, typer.Option("--counts", help="Count features instead of binary bits.")] = False,
    descriptors: Annotated[bool, typer.Option(
        "--descriptors", help="Append 12 RDKit 2D descriptors.")] = False,
    no_standardize: Annotated[bool, typer.Option(
        "--no-standardize", help="Skip MolStandardize (cleanup, parent, neutralise, tautomer).")] = False,
    stereo: Annotated[StereoMode, typer.Option(click_type=click.Choice(get_args(StereoMode)),
                                               help="Stereochemistry: drop (MELLODDY) or keep.")] = "drop",
    max_heavy_atoms: Annotated[int, typer.Option(help="Reject larger molecules.")] = 100,
    folds: Annotated[int, typer.Option("--folds", help="Number of scaffold folds.")] = 5,
    duplicate_tolerance: Annotated[float, typer.Option(
        help="Regression duplicates agree if their values span at most this (task units).")] = 1.0,
    workers: Annotated[int | None, typer.Option(help="Processes to use (default: all cores).")] = None,
    rejects: Annotated[Path | None, typer.Option(
        help="Also write the rejects table here (it is always in STORE/rejects.csv).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store folder.")] = False,
) -> None:
    """Prepare a site's compound file into a site store: standardise, featurise (hashed ECFP with
    key-permuted bits), assign scaffold folds, build the task catalogue with quorums.

    Every input row is either kept or listed in STORE/rejects.csv with its line number and reason.
    Duplicates of one structure are merged; a task on which they disagree loses that label only,
    listed in STORE/conflicts.csv (a row left with no label is rejected: "all labels conflicting").

    Examples:

      fedmol prepare tox21.csv.gz --key-file consortium.key --out store/ --id-col mol_id

      fedmol prepare assays.csv --format long --task-col assay --value-col pIC50
      --qualifier-col relation --threshold A1=6.5 -k consortium.key -o store/

      fedmol prepare --embedded solubility --key-file consortium.key --out demo_store/
    """
    from fedmol.datasets.featurize import FeaturizeSettings
    from fedmol.datasets.folds import FoldSettings
    from fedmol.datasets.keys import load_key
    from fedmol.datasets.prepare import PrepareSettings, prepare_file, prepare_frame
    from fedmol.datasets.readers import TableSpec
    from fedmol.datasets.standardize import StandardizeSettings
    from fedmol.errors import InputError

    if (input is None) == (embedded is None):
        raise InputError("give either an INPUT file or --embedded solubility|freesolv (not both)")
    _check_out(out, overwrite)
    key = load_key(key_file)
    thresholds = _parse_thresholds(threshold or [])
    tasks = tuple(c.strip() for c in task_cols.split(",") if c.strip()) if task_cols else None
    frame = None
    if embedded is not None:
        from fedmol.datasets import embedded as demo

        frame = demo.embedded(embedded)
        _, smiles_col, id_col, default_tasks = demo.EMBEDDED[embedded]
        tasks = tasks or default_tasks
    settings = PrepareSettings(
        table=TableSpec(smiles_col=smiles_col, id_col=id_col, task_cols=tasks, layout=layout,
                        task_col=task_col, value_col=value_col, qualifier_col=qualifier_col),
        standardize=StandardizeSettings(enabled=not no_standardize, stereo=stereo,
                                        max_heavy_atoms=max_heavy_atoms),
        featurize=FeaturizeSettings(radius=radius, n_bits=n_bits, counts=counts, descriptors=descriptors),
        folds=FoldSettings(n_folds=folds),
        thresholds=tuple(sorted(thresholds.items())),
        duplicate_tolerance=duplicate_tolerance,
    )
    if frame is not None:
        result = prepare_frame(frame, key, out, settings, workers=workers, progress=True,
                               rejects_path=rejects, source=f"embedded:{embedded}")
    else:
        assert input is not None
        result = prepare_file(input, key, out, settings, workers=workers, progress=True, rejects_path=rejects)
    _print_summary(result, out, rejects)


def _check_out(out: Path, overwrite: bool) -> None:
    from fedmol.errors import InputError

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a folder for the site store")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"store folder {out} already exists and is not empty: pass --overwrite or choose "
                         "another --out")


def _parse_thresholds(items: list[str]) -> dict[str, float]:
    from fedmol.errors import InputError

    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"--threshold {item!r} is not TASK=VALUE (for example pIC50=6.5)") from None
    return out


def _print_summary(result: Any, out: Path, rejects: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result.summary
    console = Console()
    t = Table(title=f"fedmol prepare → {out}", show_header=False, title_justify="left")
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    t.add_row("rows read", f"{s['read']:,}")
    t.add_row("rows kept", f"{s['kept']:,} → {s['compounds']:,} compounds "
                           f"({s['merged_duplicate_rows']:,} duplicate rows merged)")
    t.add_row("rows rejected", f"{s['rejected']:,}  (kept + rejected = read: "
                               f"{s['kept'] + s['rejected'] == s['read']})")
    for reason, n in s["rejected_by_reason"].items():
        t.add_row("", f"{n:>7,}  {reason}")
    c = s.get("conflicts") or {}
    if c.get("labels_cleared"):
        t.add_row("conflicting labels", f"{c['labels_cleared']:,} cleared (duplicates of one structure disagree on "
                                        f"a task: that label only; {c['rows_involved']:,} rows involved, "
                                        f"{c['rows_rejected_all_labels_conflicting']:,} of them left with no "
                                        f"label and rejected), listed in {out / c['file']}")
        for reason, n in c["by_reason"].items():
            t.add_row("", f"{n:>7,}  {reason}")
    if s["ignored_columns"]:
        t.add_row("ignored columns", ", ".join(s["ignored_columns"]) + " (not numeric; use --task-cols)")
    for name, n in s["ambiguous_censored"].items():
        if n:
            t.add_row("ambiguous censored",
                      f"{name}: {n} values could not be thresholded (label left missing)")
    t.add_row("tasks", f"{s['tasks_trainable']} of {s['tasks_total']} trainable, "
                       f"{s['tasks_evaluable']} evaluable")
    not_eval = s.get("tasks_not_evaluable", {})
    few = len(s["tasks_excluded"]) + len(not_eval) <= _TASK_NOTES_LISTED
    if few:
        for name, reason in s["tasks_excluded"].items():
            t.add_row("", f"excluded {name}: {reason}")
    else:  # a wide file: hundreds of per-task lines would bury the table; counts here, names in summary.json
        for reason, n in s.get("task_notes_by_reason", {}).items():
            t.add_row("", f"{n:>7,}  {reason}")
        t.add_row("", f"per task: {out / 'summary.json'} (tasks_excluded, tasks_not_evaluable)")
    f = s["folds"]
    sizes = " / ".join(f"{n:,}" for n in f["sizes"])
    t.add_row("fold sizes", f"{sizes}  (largest/smallest {f['max_over_min']})")
    t.add_row("fold basis", ", ".join(f"{k} {v:,}" for k, v in f["basis"].items()))
    t.add_row("key fingerprint", s["key_fingerprint"])
    t.add_row("reference hash", s["reference_hash"])
    t.add_row("rejects file", str(out / "rejects.csv") + (f" and {rejects}" if rejects else ""))
    t.add_row("time", f"{s['seconds']['total']} s")
    console.print(t)
    for name, reason in not_eval.items() if few else ():
        console.print(f"[yellow]note:[/] {name}: {reason}", highlight=False)


_TASK_NOTES_LISTED = 10  # more excluded or not-evaluable tasks than this are counted per reason instead
