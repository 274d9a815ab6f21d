"""wss:// with a private CA (CA_CERT), INSECURE_SKIP_VERIFY, and an HTTP proxy: real sockets."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.link.websocket import LinkSettings
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
        hub.drop()  # the next dial reuses the process's TLS context
        hub.wait_registered(count=2, timeout=30)
    hub.assert_clean()


def test_a_wss_link_reuses_one_tls_context_per_ca_setting_and_ws_builds_none(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki")
    assert LinkSettings(url="ws://127.0.0.1:9/ws").sslopt() == {}
    first = LinkSettings(url="wss://a.example/ws", ca_cert=str(pki.ca_pem)).sslopt()["context"]
    again = LinkSettings(url="wss://b.example/ws", ca_cert=str(pki.ca_pem)).sslopt()["context"]
    assert again is first  # the CA bundle is loaded once, not at every dial
    insecure = LinkSettings(url="wss://a.example/ws", insecure_skip_verify=True).sslopt()
    assert insecure["context"] is not first and insecure["context"].verify_mode == ssl.CERT_NONE
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    fresh = LinkSettings(url="wss://a.example/ws", ca_cert=str(pki.ca_pem)).ssl_context()
    assert fresh is not first  # the doctor's check reads the CA file as it is now


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
