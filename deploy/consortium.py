"""A whole consortium on one machine, as separate processes on 127.0.0.1.

`LocalConsortium` starts a real `mlflow server`, a SuperLink with TLS and SuperNode
authentication, registers each site's public key, starts one SuperNode per site store, and
stops everything on exit (all children at once, each as a process group; see
`fedmol.deploy.launcher.spawn` for what happens when the launcher itself dies). Operators use it
(`fedmol consortium up`) to try the system on one machine; the deployment tests use it too. Real
sites run the same commands on their own hosts (see deploy/README.md).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmol.config import FederationConfig
from fedmol.deploy.launcher import (
    LocalMlflowServer,
    LocalSuperLink,
    LocalSuperNode,
    flwr_run,
    stop_process_groups,
)
from fedmol.deploy.pki import make_ca, make_server_cert, make_site_key


def ensure_pki(folder: Path, sites: list[str], hosts: list[str] | None = None) -> Path:
    """CA, server certificate and site keys in ``folder``; existing ones are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "ca.key").exists():
        make_ca(folder)
    if not (folder / "server.pem").exists():
        make_server_cert(folder, hosts)
    for site in sites:
        if not (folder / "sites" / site).exists():
            make_site_key(folder, site)
    return folder


@dataclass
class LocalConsortium:
    """``stores``: site name -> site store. ``workdir`` holds PKI, Flower state, MLflow, outputs.

    Paths are made absolute here, once: the children run with other working directories."""

    workdir: Path
    stores: dict[str, Path]
    tls: bool = True
    auth: bool = True
    mlflow_server: bool = True
    warm: bool = True  # a warm site worker per SuperNode (see client/worker.py)
    # the SuperLink's link state in a file, as the production templates keep it (`LocalSuperLink`);
    # this consortium admits its sites at every start, so by default it keeps it in memory
    persistent_link: bool = False
    link: LocalSuperLink | None = None
    mlflow: LocalMlflowServer | None = None
    nodes: dict[str, LocalSuperNode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.stores = {site: Path(store).resolve() for site, store in self.stores.items()}

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "server"

    def up(self) -> LocalConsortium:
        """Start everything; on any failure, stop what was started and re-raise."""
        try:
            return self._up()
        except BaseException:
            self.down()
            raise

    def _up(self) -> LocalConsortium:
        if self.tls or self.auth:
            ensure_pki(self.pki, list(self.stores))
        if self.mlflow_server:
            self.mlflow = LocalMlflowServer(self.workdir / "mlflow").start()
        self.link = LocalSuperLink(self.workdir / "flower", simulation=False,
                                   tls_dir=self.pki if self.tls else None, supernode_auth=self.auth,
                                   persistent=self.persistent_link).start()
        for site in self.stores:
            if self.auth:
                self.link.admit(self.pki / "sites" / f"{site}.pub")
            self.start_site(site)
        self._write_state()
        return self

    def start_site(self, site: str, *, private_key: Path | None = None, fault_drill: str = "") -> LocalSuperNode:
        assert self.link is not None
        if site in self.nodes:
            self.nodes[site].stop()
        key = private_key or (self.pki / "sites" / site if self.auth else None)
        node = LocalSuperNode(self.link, self.stores[site], site, private_key=key, fault_drill=fault_drill,
                              warm=self.warm).start()
        self.nodes[site] = node
        return node

    def config(self, **changes: Any) -> FederationConfig:
        """A run config for this consortium (its output dir, its MLflow server)."""
        base = FederationConfig(output_dir=str(self.output_dir), min_sites=len(self.stores),
                                tracking_uri=self.mlflow.uri if self.mlflow else "")
        return base.replace(**changes)

    def run(self, cfg: FederationConfig, *, on_line: Callable[[str], None] | None = None,
            timeout: float = 1800.0) -> int:
        assert self.link is not None, "call up() first"
        return flwr_run(self.link, cfg.to_run_config(), on_line=on_line, timeout=timeout)

    def wait_for_nodes(self, n: int, timeout: float = 60.0) -> None:
        """Block until ``n`` SuperNodes are connected (as `flwr supernode list` shows them online)."""
        assert self.link is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.link.list_supernodes().count("online") >= n:
                return
            time.sleep(0.5)
        raise TimeoutError(f"fewer than {n} SuperNodes online after {timeout:.0f} s")

    def dead(self) -> dict[str, int]:
        """Components whose process has exited: name ("superlink", "mlflow", "site NAME") -> exit code."""
        procs = {"superlink": self.link.proc if self.link else None,
                 "mlflow": self.mlflow.proc if self.mlflow else None,
                 **{f"site {name}": node.proc for name, node in self.nodes.items()}}
        return {name: code for name, proc in procs.items() if proc is not None and (code := proc.poll()) is not None}

    def down(self, timeout: float = 15.0) -> None:
        """Stop every child at once (SIGTERM to each process group, SIGKILL after ``timeout`` s)."""
        procs: list[subprocess.Popen[bytes] | None] = [p for node in self.nodes.values() for p in node.processes()]
        procs += [self.link.proc if self.link else None, self.mlflow.proc if self.mlflow else None]
        stop_process_groups(procs, timeout)
        for node in self.nodes.values():
            node.stop()  # nothing left to stop: clears its handles
        self.nodes.clear()
        if self.link is not None:
            self.link.stop()
            self.link = None
        if self.mlflow is not None:
            self.mlflow.stop()
            self.mlflow = None

    def _write_state(self) -> None:
        state = {"superlink": self.link.address if self.link else None,
                 "flwr_home": str(self.link.flwr_home) if self.link else None,
                 "tls": self.tls, "auth": self.auth,
                 "mlflow": self.mlflow.uri if self.mlflow else None,
                 "sites": {s: str(p) for s, p in self.stores.items()},
                 "output_dir": str(self.output_dir)}
        (self.workdir / "consortium.json").write_text(json.dumps(state, indent=2))

    def __enter__(self) -> LocalConsortium:
        return self.up()

    def __exit__(self, *exc: Any) -> None:
        self.down()
