"""wss:// with a private CA (CA_CERT), INSECURE_SKIP_VERIFY, and an HTTP proxy: real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_harness import REGISTRATION_TOKEN, running_agent
from tests.support.daemon import PrivateDockerd
from tests.support.hub import FakeHub
from tests.support.proxy import ConnectProxy
from tests.support.tls import LocalPki, make_pki
from tests.support.waiting import wait_for


@pytest.fixture
def tls_hub(tmp_path: Path) -> Iterator[tuple[FakeHub, LocalPki]]:
    pki = make_pki(tmp_path / "pki")
    with FakeHub(ssl_context=pki.server_context()) as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        yield hub, pki


def test_wss_with_ca_cert_registers(
    tls_hub: tuple[FakeHub, LocalPki], tmp_path: Path, dockerd: PrivateDockerd
) -> None:
    hub, pki = tls_hub
    assert hub.url.startswith("https://")
    with running_agent(tmp_path / "d", dockerd.base_url, hub=hub, CA_CERT=str(pki.ca_pem)):
        hub.wait_registered()
    hub.assert_clean()


def test_wss_without_the_ca_fails_with_a_certificate_error(
    tls_hub: tuple[FakeHub, LocalPki],
    tmp_path: Path,
    dockerd: PrivateDockerd,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub, _ = tls_hub
    with running_agent(tmp_path / "d", dockerd.base_url, hub=hub):
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, 15, "a TLS error")
        assert hub.registrations == []


def test_insecure_skip_verify_accepts_an_untrusted_certificate(
    tls_hub: tuple[FakeHub, LocalPki], tmp_path: Path, dockerd: PrivateDockerd
) -> None:
    hub, _ = tls_hub
    with running_agent(tmp_path / "d", dockerd.base_url, hub=hub, INSECURE_SKIP_VERIFY="true"):
        hub.wait_registered()


def test_an_expired_certificate_is_refused_even_with_the_ca(
    tmp_path: Path, dockerd: PrivateDockerd, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path / "pki", expired=True)
    with FakeHub(ssl_context=pki.server_context()) as hub:
        hub.add_registration_token(REGISTRATION_TOKEN)
        with running_agent(tmp_path / "d", dockerd.base_url, hub=hub, CA_CERT=str(pki.ca_pem)):
            wait_for(lambda: "certificate has expired" in caplog.text, 15, "an expiry error")
            assert hub.registrations == []


def test_http_proxy_is_used_for_ws_and_no_proxy_bypasses_it(
    tmp_path: Path, dockerd: PrivateDockerd
) -> None:
    with FakeHub() as hub, ConnectProxy() as proxy:
        hub.add_registration_token(REGISTRATION_TOKEN, multi_use=True)
        with running_agent(tmp_path / "a", dockerd.base_url, hub=hub, HTTP_PROXY=proxy.url):
            hub.wait_registered()
        assert proxy.tunnels == [f"127.0.0.1:{hub.port}"]
    with FakeHub() as hub, ConnectProxy() as proxy:
        hub.add_registration_token(REGISTRATION_TOKEN)
        with running_agent(
            tmp_path / "b", dockerd.base_url, hub=hub, HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1"
        ):
            hub.wait_registered()
        assert proxy.tunnels == []
