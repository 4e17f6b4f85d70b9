"""The `fedmol` command. Each area registers its subcommands from its own `cli` module.

Imports of heavy libraries (rdkit, torch, flwr, mlflow) happen inside the commands, so
`fedmol --help` answers at once.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from fedmol.errors import FedmolError

app = typer.Typer(
    name="fedmol",
    help=(
        "Federated multi-task molecular property models.\n\n"
        "Sites prepare their compound data (fedmol keygen, fedmol prepare), train locally "
        "(fedmol train) and join federations; operators run the server; chemists score "
        "compounds with the shared model. Start with `fedmol demo`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Federated multi-task molecular property models (see `fedmol COMMAND --help`)."""
    # A callback keeps typer in "group" mode even when only one subcommand is registered.


# Each area owns its commands and registers them from its own `cli` module. This module sits above
# every area (the import contracts in pyproject.toml say so); a broken area fails loudly here.
AREAS = ("fedmol.datasets.cli", "fedmol.models.cli", "fedmol.client.cli", "fedmol.scoring.cli", "fedmol.deploy.cli")


def _register() -> None:
    import importlib

    for module in AREAS:
        importlib.import_module(module).register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fedmol` console script. Returns the process exit code."""
    _register()
    try:
        # Outside standalone mode click returns a `raise typer.Exit(code)`'s code instead of raising it.
        code = app(args=argv, standalone_mode=False)
    except FedmolError as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        _err.print("aborted")
        return 130
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
