"""The deployment templates keep secrets and APIs where deploy/README.md says (#13.7, #13.8).

Cheap checks on the files themselves; tests/deploy/test_exposure.py runs the server's SuperLink and
Fleet proxy from the same files.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml

from tests.deploy.templates import DEPLOY, flag, unit_service

COMPOSE = DEPLOY / "compose"
SERVER_UNITS = ["fedmol-superlink.service", "fedmol-mlflow.service"]
SITE_UNITS = ["fedmol-supernode.service", "fedmol-site-worker.service", "fedmol-scoring.service"]


def compose(name: str) -> dict[str, dict[str, Any]]:
    services = yaml.safe_load((COMPOSE / name).read_text())["services"]
    assert isinstance(services, dict) and services
    return services


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def published(port: str) -> tuple[str, str]:
    """(host address, container port) of a compose `ports` entry; ${VAR:-default} takes its default."""
    port = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(port))
    parts = port.split(":")
    host = parts[0] if len(parts) == 3 else "0.0.0.0"
    return host, parts[-1].split("/")[0]


def mounted_conf(service: dict[str, Any]) -> str:
    """The nginx server block a proxy service mounts, read from deploy/nginx/."""
    confs = [v.split(":")[0] for v in service.get("volumes", []) if v.split(":")[1].startswith("/etc/nginx/")]
    assert len(confs) == 1, service
    return (COMPOSE / confs[0]).resolve().read_text()


def test_the_consortium_key_never_reaches_the_server() -> None:
    for name, service in compose("server.yml").items():
        text = yaml.safe_dump(service)
        assert "consortium.key" not in text and "FEDMOL_KEY_FILE" not in text and "--key-file" not in text, name
        assert "fedmol serve" not in " ".join(command(service)), f"{name}: scoring is a site's service"
    for unit in SERVER_UNITS:
        text = (DEPLOY / "systemd" / unit).read_text()
        assert "consortium.key" not in text and "--key-file" not in text, unit


def test_only_tls_proxies_publish_beyond_loopback() -> None:
    for file in ("server.yml", "site.yml"):
        for name, service in compose(file).items():
            for port in service.get("ports", []):
                host, inside = published(port)
                if host == "127.0.0.1":
                    continue
                assert str(service.get("image", "")).startswith("nginx"), f"{file}: {name} publishes {port}"
                assert re.search(rf"listen {inside} ssl;", mounted_conf(service)), f"{file}: {name}:{inside} not TLS"
    public = [published(p) for s in compose("server.yml").values() for p in s.get("ports", [])]
    assert [p for h, p in public if h != "127.0.0.1"] == ["9092"]


def test_the_fleet_proxy_forwards_the_fleet_api_only() -> None:
    conf = (DEPLOY / "nginx" / "fedmol-fleet.conf").read_text()
    code = "\n".join(line.split("#")[0] for line in conf.splitlines())
    locations = []
    for match in re.finditer(r"location\s+(\S+)\s*\{", code):
        depth, end = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(code[end], 0)
            end += 1
        locations.append((match.group(1), code[match.end():end - 1]))
    assert {path for path, _ in locations} == {"/v1/fleet/", "/"}
    for path, body in locations:
        if path == "/v1/fleet/":
            assert "proxy_pass https://127.0.0.1:9093;" in body and "proxy_ssl_verify on;" in body
        else:
            assert "proxy_pass" not in body and "return 404;" in body
    assert code.count("proxy_pass") == 1
    assert re.search(r"listen 9092 ssl;", code) and "ssl_certificate " in code


def test_the_superlink_listens_on_loopback_in_both_templates() -> None:
    unit_cmd, _ = unit_service(DEPLOY / "systemd" / "fedmol-superlink.service")
    services = compose("server.yml")
    compose_cmd = command(services["superlink"])
    for cmd in (unit_cmd, compose_cmd):
        assert flag(cmd, "--host") == "127.0.0.1" and flag(cmd, "--port") == "9093"
        assert "--enable-supernode-auth" in cmd and "--insecure" not in cmd
    assert {a for a in unit_cmd if a.startswith("--")} == {a for a in compose_cmd if a.startswith("--")}
    # The proxy reaches it on the loopback of the namespace they share, where nothing else listens.
    assert services["superlink"]["network_mode"] == "service:fleet-proxy"
    assert "fedmol-fleet.conf" in " ".join(services["fleet-proxy"]["volumes"])
    # Sites dial the proxy's port.
    site_cmd = command(compose("site.yml")["supernode"])
    unit_site, _ = unit_service(DEPLOY / "systemd" / "fedmol-supernode.service")
    assert flag(site_cmd, "--superlink").endswith(":9092") and flag(unit_site, "--superlink").endswith(":9092")


@pytest.mark.parametrize("where", ["compose", "systemd"])
def test_site_scoring_has_tokens_tls_and_the_key_at_the_site(where: str) -> None:
    if where == "compose":
        services = compose("site.yml")
        scoring = [s for s in services.values() if command(s)[:2] == ["fedmol", "serve"]]
        assert len(scoring) == 1
        cmd = command(scoring[0])
        mounts = {v.split(":")[1]: v.split(":")[0] for v in scoring[0]["volumes"]}
        assert flag(cmd, "--tokens-file") in mounts and flag(cmd, "--key-file") in mounts
        assert "ports" not in scoring[0]
        proxy = services[scoring[0]["network_mode"].removeprefix("service:")]
        conf = mounted_conf(proxy)
    else:
        cmd, _ = unit_service(DEPLOY / "systemd" / "fedmol-scoring.service")
        assert flag(cmd, "--tokens-file") and flag(cmd, "--key-file")
        conf = (DEPLOY / "nginx" / "fedmol-scoring.conf").read_text()
    assert flag(cmd, "--host") == "127.0.0.1"
    assert re.search(r"listen \d+ ssl;", conf) and "ssl_certificate " in conf
    assert f"proxy_pass http://127.0.0.1:{flag(cmd, '--port')};" in conf
    # Wrong tokens are throttled per caller: the proxy passes the caller's address, not its own.
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf


def test_the_site_runtime_api_is_local_and_authenticated() -> None:
    services = compose("site.yml")
    node, worker = command(services["supernode"]), command(services["worker"])
    assert flag(node, "--host") == "127.0.0.1" and services["worker"]["network_mode"] == "service:supernode"
    assert flag(node, "--superexec-auth-secret-file") == flag(worker, "--auth-secret-file")
    unit_node, _ = unit_service(DEPLOY / "systemd" / "fedmol-supernode.service")
    unit_worker, _ = unit_service(DEPLOY / "systemd" / "fedmol-site-worker.service")
    assert flag(unit_node, "--host") == "127.0.0.1"
    assert flag(unit_node, "--superexec-auth-secret-file") == flag(unit_worker, "--auth-secret-file")
