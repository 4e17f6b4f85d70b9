"""Only the Fleet API faces the sites (#13.7).

The SuperLink starts with the flags of ``deploy/systemd/fedmol-superlink.service`` and nginx with
``deploy/nginx/fedmol-fleet.conf`` (both read from the templates, only paths and ports swapped for
127.0.0.1 ones), as the coordination server runs them. A client that reaches the site-facing address
without credentials can neither submit or list runs nor register a SuperNode key, while the same
calls work on the loopback address the operator uses, and an admitted SuperNode works through the
proxy. Needs Debian's nginx (`make nginx`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedmol.deploy.launcher import _bin, flower_env, free_port, spawn, stop_process_groups
from fedmol.deploy.pki import make_ca, make_server_cert, make_site_key
from tests.deploy.templates import DEPLOY, flag, unit_service

pytestmark = pytest.mark.slow

UNIT = DEPLOY / "systemd" / "fedmol-superlink.service"
FLEET_CONF = DEPLOY / "nginx" / "fedmol-fleet.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LINK_PORT, PUBLIC_PORT = 9093, 9092  # the templates' ports
PROTOBUF = {"content-type": "application/protobuf", "accept": "application/protobuf"}


@dataclass(frozen=True)
class Server:
    """The running server: its tmp folder, PKI, environment for `flwr`, and both addresses."""

    tmp: Path
    pki: Path
    env: dict[str, str]
    verify: ssl.SSLContext
    local: str  # https://127.0.0.1:<SuperLink port>: the operator's side
    public: str  # https://127.0.0.1:<proxy port>: what the sites (and anyone) reach
    public_address: str


def _swap(text: str, old: str, new: str) -> str:
    assert old in text, f"the template no longer contains {old!r}: update this test with it"
    return text.replace(old, new)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"nginx not found at {NGINX}: run `make nginx` (Debian's nginx-light)")
    tmp = tmp_path_factory.mktemp("exposure")
    pki = tmp / "pki"
    make_ca(pki)
    make_server_cert(pki, ["127.0.0.1", "localhost"])
    make_site_key(pki, "acme")
    make_site_key(pki, "intruder")
    (tmp / "state").mkdir()

    # The SuperLink exactly as the unit starts it, with this machine's paths and a free loopback port.
    cmd, unit_env = unit_service(UNIT)
    assert flag(cmd, "--host") == "127.0.0.1", "the SuperLink must listen on loopback only"
    assert flag(cmd, "--port") == str(LINK_PORT)
    assert "--enable-supernode-auth" in cmd and "--insecure" not in cmd
    template = shlex.split(_swap(_swap(shlex.join(cmd), "/srv/fedmol/pki/", f"{pki}/"), "/srv/fedmol/state/",
                                 f"{tmp}/state/"))
    assert Path(template[0]).name == "fedmol-superlink"
    template[0] = _bin("fedmol-superlink")
    flwr_home = tmp / "flwr-home"
    flwr_home.mkdir()
    env = {**flower_env(flwr_home), **unit_env}
    verify = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    # A free port can be taken between free_port() and the bind (another process, or the two picks
    # equal): start again on new ports, at most 3 times.
    for _attempt in range(3):
        link_port = free_port()
        public_port = free_port()
        while public_port == link_port:
            public_port = free_port()
        procs = _start(tmp, pki, template, env, link_port, public_port, verify)
        if procs:
            break
    else:
        pytest.fail("the SuperLink or nginx could not bind a free loopback port 3 times: "
                    + (tmp / "superlink.log").read_text()[-1000:] + (tmp / "nginx" / "error.log").read_text()[-1000:])
    try:
        yield Server(tmp=tmp, pki=pki, env=env, verify=verify, local=f"https://127.0.0.1:{link_port}",
                     public=f"https://127.0.0.1:{public_port}", public_address=f"127.0.0.1:{public_port}")
    finally:
        stop_process_groups(procs, 15)


def _start(tmp: Path, pki: Path, template: list[str], env: dict[str, str], link_port: int, public_port: int,
           verify: ssl.SSLContext) -> list[Any]:
    """Start the SuperLink, then nginx in front of it, on these ports; both answering, or [] when a
    port was taken (both stopped)."""
    cmd = list(template)
    cmd[cmd.index("--port") + 1] = str(link_port)
    (tmp / "flwr-home" / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n'
        f'[superlink.local]\naddress = "127.0.0.1:{link_port}"\nroot-certificates = "{pki / "ca.crt"}"\n\n'
        f'[superlink.public]\naddress = "127.0.0.1:{public_port}"\nroot-certificates = "{pki / "ca.crt"}"\n')

    # nginx with the shipped server block, wrapped in a main config that keeps everything in tmp.
    conf = FLEET_CONF.read_text()
    conf = _swap(conf, f"listen {PUBLIC_PORT} ssl;", f"listen 127.0.0.1:{public_port} ssl;")
    conf = _swap(conf, f"proxy_pass https://127.0.0.1:{LINK_PORT};", f"proxy_pass https://127.0.0.1:{link_port};")
    conf = _swap(conf, "/srv/fedmol/pki/", f"{pki}/")
    (tmp / "fleet.conf").write_text(conf)
    ngx = tmp / "nginx"
    ngx.mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers as root can use the 0700 pytest tmp
    (ngx / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {ngx}/nginx.pid;\nerror_log {ngx}/error.log info;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n access_log {ngx}/access.log;\n client_body_temp_path {ngx}/body;\n"
        f" proxy_temp_path {ngx}/proxy;\n fastcgi_temp_path {ngx}/fastcgi;\n uwsgi_temp_path {ngx}/uwsgi;\n"
        f" scgi_temp_path {ngx}/scgi;\n include {tmp / 'fleet.conf'};\n}}\n")
    check = subprocess.run([NGINX, "-t", "-p", str(ngx), "-e", str(ngx / "error.log"), "-c", str(ngx / "nginx.conf")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr

    # The SuperLink first, answering on its port, then nginx: the proxy never holds the SuperLink's port.
    for log in (tmp / "superlink.log", ngx / "error.log"):  # this attempt's lines only
        log.write_text("")
    procs = [spawn(cmd, log=tmp / "superlink.log", env=env, cwd=tmp)]
    deadline = time.monotonic() + 60
    try:
        # The SuperLink's /health answers 200; nginx answers at all (404: not forwarded) once it listens.
        if not _answers(procs[-1], "superlink", f"https://127.0.0.1:{link_port}/health", tmp / "superlink.log",
                        verify, deadline, success=True):
            stop_process_groups(procs, 15)
            return []
        procs.append(spawn([NGINX, "-p", str(ngx), "-e", str(ngx / "error.log"), "-c", str(ngx / "nginx.conf"),
                            "-g", "daemon off;"], log=tmp / "nginx.log"))
        if not _answers(procs[-1], "nginx", f"https://127.0.0.1:{public_port}/health", ngx / "error.log",
                        verify, deadline, success=False):
            stop_process_groups(procs, 15)
            return []
    except BaseException:
        stop_process_groups(procs, 15)
        raise
    return procs


def _answers(proc: Any, name: str, url: str, log: Path, verify: ssl.SSLContext, deadline: float, *,
             success: bool) -> bool:
    """Wait until ``url`` answers (with a 2xx when ``success``); False when ``proc`` exited because its
    port was taken, an AssertionError when it exited otherwise or the deadline passed."""
    while True:
        if proc.poll() is not None:
            text = log.read_text() if log.exists() else ""
            if "in use" in text:  # uvicorn: "address already in use"; nginx: "Address already in use"
                return False
            raise AssertionError(f"{name} exited: {text[-2000:]}")
        try:
            if httpx.get(url, verify=verify, timeout=1).is_success or not success:
                return True
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-2000:] if log.exists() else name
        time.sleep(0.2)


def _flwr(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_bin("flwr"), *args], env=server.env, cwd=server.tmp, capture_output=True, text=True,
                          timeout=60)


def _post(server: Server, where: str, path: str, body: bytes = b"") -> httpx.Response:
    return httpx.post(f"{getattr(server, where)}{path}", content=body, headers=PROTOBUF, verify=server.verify,
                      timeout=10)


def _runs(server: Server) -> dict[int, Any]:
    from flwr.proto.control_pb2 import ListRunsRequest, ListRunsResponse

    answer = _post(server, "local", "/v1/control/list-runs", ListRunsRequest().SerializeToString())
    assert answer.status_code == 200, answer.text[:300]
    return dict(ListRunsResponse.FromString(answer.content).run_dict)


def _nodes(server: Server) -> list[Any]:
    """The SuperLink's SuperNodes, asked on loopback (Control API), as the operator's `flwr` would."""
    from flwr.proto.control_pb2 import ListNodesRequest, ListNodesResponse

    answer = _post(server, "local", "/v1/control/list-nodes", ListNodesRequest().SerializeToString())
    assert answer.status_code == 200, answer.text[:300]
    return list(ListNodesResponse.FromString(answer.content).nodes_info)


CLOSED = ["/v1/control/start-run", "/v1/control/list-runs", "/v1/control/register-node", "/v1/control/list-nodes",
          "/v1/control/stop-run", "/v1/runtime/get-nodes", "/v1/runtime/create-task", "/v1/runtime/acquire-task"]


@pytest.mark.parametrize("path", CLOSED)
def test_control_and_runtime_routes_are_not_forwarded(server: Server, path: str) -> None:
    answer = _post(server, "public", path)
    assert answer.status_code == 404, (path, answer.status_code, answer.text[:200])
    assert b"<center>nginx</center>" in answer.content, answer.text[:200]  # nginx's own page: never forwarded


def test_docs_schema_and_health_are_not_forwarded(server: Server) -> None:
    for path in ("/docs", "/openapi.json", "/health", "/", "/v1/fleet/../control/list-runs"):
        answer = httpx.get(f"{server.public}{path}", verify=server.verify, timeout=10)
        assert answer.status_code == 404, (path, answer.status_code)


def test_the_loopback_address_serves_control(server: Server) -> None:
    """The control for the tests above: the very same routes answer where the operator calls them."""
    assert _runs(server) == {}
    assert _nodes(server) == []


def test_no_run_submitted_from_the_public_address(server: Server) -> None:
    from fedmol.deploy.launcher import write_flower_app

    app = write_flower_app(server.tmp / "app")
    out = _flwr(server, "run", str(app), "public")
    assert out.returncode != 0, out.stdout
    assert _runs(server) == {}


def test_no_supernode_key_registered_from_the_public_address(server: Server) -> None:
    from cryptography.hazmat.primitives import serialization
    from flwr.proto.fleet_pb2 import ActivateNodeRequest, RegisterNodeFleetRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    pki = server.pki
    intruder_pub = pki / "sites" / "intruder.pub"
    out = _flwr(server, "supernode", "register", str(intruder_pub), "public")
    assert out.returncode != 0, out.stdout

    # Flower's own Fleet client, signing with the intruder's key: the Fleet API does not register keys.
    key = serialization.load_ssh_private_key((pki / "sites" / "intruder").read_bytes(), password=None)
    pub = public_key_to_bytes(key.public_key())  # type: ignore[arg-type]
    fleet = FleetHttpClient.from_server_address(server.public_address, insecure=False,
                                                root_certificates=(pki / "ca.crt").read_bytes(),
                                                interceptors=[NodeAuthHttpInterceptor(key, key.public_key())])  # type: ignore[arg-type]
    for call, request in ((fleet.RegisterNode, RegisterNodeFleetRequest(public_key=pub)),
                          (fleet.ActivateNode, ActivateNodeRequest(public_key=pub, heartbeat_interval=30))):
        with pytest.raises(httpx.HTTPStatusError) as err:
            call(request)
        # Flower answered (not nginx's 404): the Fleet route is forwarded and refuses the unknown key.
        answer = err.value.response
        assert 400 <= answer.status_code < 500 and answer.status_code != 404, answer.text[:300]
        assert "detail" in answer.json(), answer.text[:300]

    assert [n.public_key for n in _nodes(server) if n.public_key == pub] == []


def test_an_admitted_supernode_connects_through_the_proxy(server: Server) -> None:
    pki = server.pki
    from cryptography.hazmat.primitives import serialization
    from flwr.proto.control_pb2 import RegisterNodeRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    # The operator admits the site on loopback (the route `flwr supernode register acme.pub local` calls).
    key = serialization.load_ssh_public_key((pki / "sites" / "acme.pub").read_bytes())
    request = RegisterNodeRequest(public_key=public_key_to_bytes(key), name="acme")  # type: ignore[arg-type]
    answer = _post(server, "local", "/v1/control/register-node", request.SerializeToString())
    assert answer.status_code == 200, answer.text[:300]
    tmp = server.tmp
    node = spawn([_bin("flower-supernode"), "--superlink", server.public_address,
                  "--root-certificates", str(pki / "ca.crt"),
                  "--auth-supernode-private-key", str(pki / "sites" / "acme"),
                  "--host", "127.0.0.1", "--port", str(free_port())],
                 log=tmp / "supernode.log", env=server.env, cwd=tmp)
    try:
        deadline = time.monotonic() + 45
        while True:
            assert node.poll() is None, (tmp / "supernode.log").read_text()[-2000:]
            statuses = [n.status for n in _nodes(server)]
            if statuses == ["online"]:
                break
            assert time.monotonic() < deadline, f"{statuses}: " + (tmp / "supernode.log").read_text()[-2000:]
            time.sleep(0.5)
        access = (tmp / "nginx" / "access.log").read_text()
        assert "POST /v1/fleet/activate-node" in access and "POST /v1/fleet/pull-messages" in access
    finally:
        stop_process_groups([node], 15)


def test_the_site_scoring_proxy_config_loads(server: Server) -> None:
    """deploy/nginx/fedmol-scoring.conf is valid nginx (its behaviour is checked in test_templates)."""
    conf = _swap((DEPLOY / "nginx" / "fedmol-scoring.conf").read_text(), "/etc/fedmol/tls/scoring.",
                 f"{server.pki}/server.")
    ngx = server.tmp / "scoring-nginx"
    ngx.mkdir()
    (ngx / "scoring.conf").write_text(conf)
    (ngx / "nginx.conf").write_text(f"pid {ngx}/nginx.pid;\nevents {{}}\nhttp {{ include {ngx}/scoring.conf; }}\n")
    check = subprocess.run([NGINX, "-t", "-p", str(ngx), "-e", str(ngx / "error.log"), "-c", str(ngx / "nginx.conf")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
