"""``fedmol train``: a site-local model from a site store (no federation).

torch is imported inside the command so ``fedmol --help`` stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, get_args

import click
import typer

from fedmol.config import FederationConfig, Optimizer
from fedmol.errors import InputError

# One recipe for a site's own model and for the federation's local training: the same optimiser,
# lr, momentum, batch size and model as the federation's defaults (fedmol.config), so `fedmol train`
# with no flag gets what the measurements chose (benchmarks/results/recipes.md).
_RECIPE = FederationConfig()

__all__ = ["register", "train_command", "parse_hidden"]


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"400,400"`` -> (400, 400); raises InputError on anything else."""
    try:
        sizes = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError as exc:
        raise InputError(
            f"--hidden {text!r}: give layer sizes separated by commas, e.g. 400 or 400,400"
        ) from exc
    if not sizes or any(s < 1 for s in sizes):
        raise InputError(f"--hidden {text!r}: give positive layer sizes, e.g. 400 or 400,400")
    return sizes


def train_command(
    store: Annotated[Path, typer.Argument(help="Site store folder written by `fedmol prepare`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the model to.")],
    test_fold: Annotated[int, typer.Option(help="Fold held out for the final test metrics.")] = 0,
    valid_fold: Annotated[int, typer.Option(help="Fold for early stopping and conformal calibration.")] = 1,
    epochs: Annotated[int, typer.Option(help="Maximum number of epochs (early stopping usually ends sooner).")] = 40,
    hidden: Annotated[str, typer.Option(help="Hidden sizes, e.g. 400,400 (first is sparse).")] = _RECIPE.hidden,
    dropout: Annotated[float, typer.Option(help="Dropout after every hidden layer.")] = _RECIPE.dropout,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = _RECIPE.lr,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size (compounds).")] = _RECIPE.batch_size,
    optimizer: Annotated[Optimizer, typer.Option(click_type=click.Choice(get_args(Optimizer)),
                                                 help="Local optimiser.")] = _RECIPE.optimizer,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = _RECIPE.momentum,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = _RECIPE.weight_decay,
    lr_step_epoch: Annotated[int, typer.Option(help="Multiply lr by --lr-gamma every N epochs.")] = 1,
    lr_gamma: Annotated[float, typer.Option(help="Step decay factor of the learning rate (1: constant).")] = 1.0,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without validation improvement "
                                          "(0: never stop early); the best epoch's weights are kept.")] = 5,
    monitor: Annotated[str, typer.Option(click_type=click.Choice(["score", "loss"]),
                                         help="What early stopping watches on the validation fold: score "
                                              "(mean ROC-AUC / R², the loss when no task qualifies) or loss.")
                       ] = "score",
    min_pos: Annotated[int, typer.Option(help="Positives a task needs for test metrics.")] = 25,
    min_neg: Annotated[int, typer.Option(help="Negatives a task needs for test metrics.")] = 25,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for weights, shuffling and dropout.")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0: torch's default).")] = 0,
) -> None:
    """Train a multi-task model on one site's store and save it with conformal calibration.

    Trains on every fold except --test-fold and --valid-fold, early-stops on the validation
    fold's score (restoring the best epoch), prints per-task test metrics and writes
    spec.json, weights.pt, meta.json and calibration.json to --out. The defaults are the
    federation's recipe (SGD with momentum on sparse fingerprints), chosen by measurement.
    """
    from rich.console import Console

    console = Console()
    result = run_training(
        store, out, test_fold=test_fold, valid_fold=valid_fold, epochs=epochs, hidden=parse_hidden(hidden),
        dropout=dropout, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay,
        lr_step_epoch=lr_step_epoch, lr_gamma=lr_gamma, patience=patience, min_pos=min_pos, min_neg=min_neg,
        momentum=momentum, monitor=monitor,
        device=device, seed=seed, threads=threads, console=console,
    )
    _print_metrics(console, result["test"], result["kinds"])
    console.print(f"model written to [bold]{result['out']}[/]")


def run_training(store_path: Path, out: Path, *, test_fold: int, valid_fold: int, epochs: int,
                 hidden: tuple[int, ...], dropout: float, lr: float, batch_size: int, optimizer: Optimizer,
                 weight_decay: float, lr_step_epoch: int, lr_gamma: float, patience: int, min_pos: int,
                 min_neg: int, device: str, seed: int, threads: int, console: Any, momentum: float = 0.9,
                 monitor: str = "score") -> dict[str, Any]:
    """The work behind ``fedmol train``; returns test metrics, kinds, history and the output path."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedmol.datasets.store import SiteStore
    from fedmol.models.data import TaskData
    from fedmol.models.io import save_model
    from fedmol.models.metrics import MetricThresholds
    from fedmol.models.network import MultiTaskNet
    from fedmol.models.spec import build_spec
    from fedmol.models.training import EpochRecord, TrainConfig, evaluate, fit_target_scaling, train_epochs
    from fedmol.models.uncertainty import calibrate

    if test_fold == valid_fold:
        raise InputError(f"--test-fold and --valid-fold are both {test_fold}: give two different folds")
    store = SiteStore.load(store_path)
    present = set(np.unique(store.folds).tolist())
    for name, fold in (("--test-fold", test_fold), ("--valid-fold", valid_fold)):
        if fold not in present:
            raise InputError(f"{name} {fold}: the store has folds {sorted(present)}")
    tasks = store.trainable_tasks()
    if not tasks:
        raise InputError(f"the store at {store_path} has no trainable task (see its tasks.json for reasons)")
    spec = build_spec(store.n_features, [], [(t.name, t.kind) for t in tasks], hidden=hidden, dropout=dropout,
                      input_transform=store.settings.get("input_transform", "binary"))  # checked by ModelSpec
    train_rows = np.flatnonzero((store.folds != test_fold) & (store.folds != valid_fold))
    if train_rows.size == 0:
        raise InputError("no compounds left for training after removing the test and validation folds")
    train = TaskData.from_store(store, spec, train_rows)
    valid = TaskData.from_store(store, spec, np.flatnonzero(store.folds == valid_fold))
    test = TaskData.from_store(store, spec, np.flatnonzero(store.folds == test_fold), trainable_only=False)

    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
        regression_weight=_RECIPE.regression_weight,
        weight_decay=weight_decay, lr_step_epoch=lr_step_epoch, lr_gamma=lr_gamma,
        patience=patience or None, monitor="score" if monitor == "score" else "loss",
        device=device, seed=seed, num_threads=threads or None,
    )
    model = MultiTaskNet(spec, seed=seed)
    fit_target_scaling(model, train)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("training", total=epochs, status="")

        def on_epoch(rec: EpochRecord) -> None:
            status = f"loss {rec.train_loss:.4f}  valid loss {rec.valid_loss:.4f}"
            if rec.valid_score is not None:
                status += f"  valid score {rec.valid_score:.3f}"
            progress.update(bar, advance=1, status=status)

        result = train_epochs(model, train, config, valid=valid, on_epoch=on_epoch)
    thresholds = MetricThresholds(min_pos=min_pos, min_neg=min_neg)
    test_eval = evaluate(model, test, thresholds=thresholds)
    calibration = calibrate(model, valid, fold=valid_fold)
    meta = {
        "kind": "site-local",
        "store": str(store_path),
        "store_settings": store.settings,
        "folds": {"test": test_fold, "valid": valid_fold},
        "train_config": config.to_dict(),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "history": [rec.__dict__ for rec in result.history],
        "n_train_compounds": train.n,
        "test": test_eval.to_dict(),
    }
    save_model(out, model, meta=meta, calibration=calibration)
    return {"test": test_eval, "kinds": spec.task_kind(), "history": result.history, "out": out}


def _print_metrics(console: Any, ev: Any, kinds: dict[str, str]) -> None:
    from rich.table import Table

    table = Table(title="test metrics per task")
    for col in ("task", "kind", "n", "ROC-AUC", "AUC-PR", "Brier", "ECE", "RMSE", "R²", "Pearson r"):
        table.add_column(col, justify="left" if col in ("task", "kind") else "right")
    for task, kind in kinds.items():
        m = ev.per_task.get(task)
        if m is None:
            table.add_row(task, kind, "", *(["–"] * 7), style="dim")
            continue
        cls_cells = [_f(m.get(k)) for k in ("roc_auc", "auc_pr", "brier", "ece")]
        reg_cells = [_f(m.get(k)) for k in ("rmse", "r2", "pearson_r")]
        table.add_row(task, kind, str(int(m["n"])), *cls_cells, *reg_cells)
    console.print(table)
    s = ev.summary
    console.print(
        f"summary: {int(s['n_classification'])} classification tasks scored, "
        f"mean ROC-AUC {_f(s['roc_auc'])}; "
        f"{int(s['n_regression'])} regression tasks scored, mean R² {_f(s['r2'])} "
        f"(tasks need enough test labels; '–' = not scored)"
    )


def _f(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.3f}"


def register(app: typer.Typer) -> None:
    """Add ``fedmol train`` to the ``fedmol`` command."""
    app.command("train")(train_command)
