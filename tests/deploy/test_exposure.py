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
import re
import shlex
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fedmol.deploy.launcher import _bin, flower_env, free_port, spawn, stop_process_groups
from fedmol.deploy.pki import make_ca, make_server_cert, make_site_key

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "fedmol-superlink.service"
FLEET_CONF = DEPLOY / "nginx" / "fedmol-fleet.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LINK_PORT, PUBLIC_PORT = 9093, 9092  # the templates' ports
PROTOBUF = {"content-type": "application/protobuf", "accept": "application/protobuf"}


def unit_service(unit: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart (continuation lines joined, split as a shell would) and Environment= of a unit."""
    text = re.sub(r"\\\n\s*", " ", unit.read_text())
    execs = re.findall(r"^ExecStart=(.+)$", text, flags=re.M)
    assert len(execs) == 1, f"{unit.name}: one ExecStart expected"
    env = dict(line.split("=", 1) for line in re.findall(r"^Environment=(.+)$", text, flags=re.M))
    return shlex.split(execs[0]), env


def _flag(cmd: list[str], name: str) -> str:
    assert name in cmd, f"{name} missing from {cmd}"
    return cmd[cmd.index(name) + 1]


def _swap(text: str, old: str, new: str) -> str:
    assert old in text, f"the template no longer contains {old!r}: update this test with it"
    return text.replace(old, new)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
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
    assert _flag(cmd, "--host") == "127.0.0.1", "the SuperLink must listen on loopback only"
    assert _flag(cmd, "--port") == str(LINK_PORT)
    assert "--enable-supernode-auth" in cmd and "--insecure" not in cmd
    link_port, public_port = free_port(), free_port()
    joined = _swap(_swap(shlex.join(cmd), "/srv/fedmol/pki/", f"{pki}/"), "/srv/fedmol/state/", f"{tmp}/state/")
    cmd = shlex.split(joined)
    assert Path(cmd[0]).name == "flower-superlink"
    cmd[0] = _bin("flower-superlink")
    cmd[cmd.index("--port") + 1] = str(link_port)
    flwr_home = tmp / "flwr-home"
    flwr_home.mkdir()
    env = {**flower_env(flwr_home), **unit_env}
    (flwr_home / "config.toml").write_text(
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
    ngx.mkdir()
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

    procs = [spawn(cmd, log=tmp / "superlink.log", env=env, cwd=tmp)]
    procs.append(spawn([NGINX, "-p", str(ngx), "-e", str(ngx / "error.log"), "-c", str(ngx / "nginx.conf"),
                        "-g", "daemon off;"], log=tmp / "nginx.log"))
    verify = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    try:
        deadline = time.monotonic() + 60
        while True:
            for p, name in zip(procs, ("superlink", "nginx"), strict=True):
                assert p.poll() is None, f"{name} exited: {(tmp / f'{name}.log').read_text()[-2000:]}"
            try:
                if httpx.get(f"https://127.0.0.1:{link_port}/health", verify=verify, timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp / "superlink.log").read_text()[-2000:]
            time.sleep(0.2)
        yield {"tmp": tmp, "pki": pki, "env": env, "verify": verify, "procs": procs,
               "local": f"https://127.0.0.1:{link_port}", "public": f"https://127.0.0.1:{public_port}",
               "public_address": f"127.0.0.1:{public_port}"}
    finally:
        stop_process_groups(procs, 15)


def _flwr(server: dict[str, object], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_bin("flwr"), *args], env=server["env"], cwd=server["tmp"],  # type: ignore[arg-type]
                          capture_output=True, text=True, timeout=60)


def _post(server: dict[str, object], where: str, path: str, body: bytes = b"") -> httpx.Response:
    return httpx.post(f"{server[where]}{path}", content=body, headers=PROTOBUF, verify=server["verify"], timeout=10)


def _runs(server: dict[str, object]) -> dict[int, object]:
    from flwr.proto.control_pb2 import ListRunsRequest, ListRunsResponse

    answer = _post(server, "local", "/v1/control/list-runs", ListRunsRequest().SerializeToString())
    assert answer.status_code == 200, answer.text[:300]
    return dict(ListRunsResponse.FromString(answer.content).run_dict)


def _nodes(server: dict[str, object]) -> list[object]:
    """The SuperLink's SuperNodes, asked on loopback (Control API), as the operator's `flwr` would."""
    from flwr.proto.control_pb2 import ListNodesRequest, ListNodesResponse

    answer = _post(server, "local", "/v1/control/list-nodes", ListNodesRequest().SerializeToString())
    assert answer.status_code == 200, answer.text[:300]
    return list(ListNodesResponse.FromString(answer.content).nodes_info)


CLOSED = ["/v1/control/start-run", "/v1/control/list-runs", "/v1/control/register-node", "/v1/control/list-nodes",
          "/v1/control/stop-run", "/v1/runtime/get-nodes", "/v1/runtime/create-task", "/v1/runtime/acquire-task"]


@pytest.mark.parametrize("path", CLOSED)
def test_control_and_runtime_routes_are_not_forwarded(server: dict[str, object], path: str) -> None:
    answer = _post(server, "public", path)
    assert answer.status_code == 404, (path, answer.status_code, answer.text[:200])
    assert b"nginx" in answer.content or answer.headers.get("server", "").startswith("nginx")


def test_docs_schema_and_health_are_not_forwarded(server: dict[str, object]) -> None:
    for path in ("/docs", "/openapi.json", "/health", "/", "/v1/fleet/../control/list-runs"):
        answer = httpx.get(f"{server['public']}{path}", verify=server["verify"], timeout=10)
        assert answer.status_code == 404, (path, answer.status_code)


def test_the_loopback_address_serves_control(server: dict[str, object]) -> None:
    """The control for the tests above: the very same routes answer where the operator calls them."""
    assert _runs(server) == {}
    assert _nodes(server) == []


def test_no_run_submitted_from_the_public_address(server: dict[str, object]) -> None:
    from fedmol.deploy.launcher import write_flower_app

    app = write_flower_app(server["tmp"] / "app")  # type: ignore[operator]
    out = _flwr(server, "run", str(app), "public")
    assert out.returncode != 0, out.stdout
    assert _runs(server) == {}


def test_no_supernode_key_registered_from_the_public_address(server: dict[str, object]) -> None:
    from cryptography.hazmat.primitives import serialization
    from flwr.proto.fleet_pb2 import ActivateNodeRequest, RegisterNodeFleetRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    pki: Path = server["pki"]  # type: ignore[assignment]
    intruder_pub = pki / "sites" / "intruder.pub"
    out = _flwr(server, "supernode", "register", str(intruder_pub), "public")
    assert out.returncode != 0, out.stdout

    # Flower's own Fleet client, signing with the intruder's key: the Fleet API does not register keys.
    key = serialization.load_ssh_private_key((pki / "sites" / "intruder").read_bytes(), password=None)
    pub = public_key_to_bytes(key.public_key())  # type: ignore[arg-type]
    fleet = FleetHttpClient.from_server_address(str(server["public_address"]), insecure=False,
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


def test_an_admitted_supernode_connects_through_the_proxy(server: dict[str, object]) -> None:
    pki: Path = server["pki"]  # type: ignore[assignment]
    from cryptography.hazmat.primitives import serialization
    from flwr.proto.control_pb2 import RegisterNodeRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    # The operator admits the site on loopback (the route `flwr supernode register acme.pub local` calls).
    key = serialization.load_ssh_public_key((pki / "sites" / "acme.pub").read_bytes())
    request = RegisterNodeRequest(public_key=public_key_to_bytes(key), name="acme")  # type: ignore[arg-type]
    answer = _post(server, "local", "/v1/control/register-node", request.SerializeToString())
    assert answer.status_code == 200, answer.text[:300]
    tmp: Path = server["tmp"]  # type: ignore[assignment]
    node = spawn([_bin("flower-supernode"), "--superlink", str(server["public_address"]),
                  "--root-certificates", str(pki / "ca.crt"), "--auth-supernode-private-key", str(pki / "sites" / "acme"),
                  "--host", "127.0.0.1", "--port", str(free_port())],
                 log=tmp / "supernode.log", env=server["env"], cwd=tmp)  # type: ignore[arg-type]
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
