"""One connection pool per Docker socket for docker-py's unix transport.

docker-py's ``UnixHTTPAdapter`` keys its connection pools by the whole request URL, path and
query included: every distinct call (``/containers/<id>/restart``, ``/containers/json?limit=5``)
gets a pool of its own, with its own kept-alive connection to dockerd, up to 25 pools per
client. After the bench's reconnect storm (100 restarts over 10 containers) the agent held 70
pools and 71 sockets; with one pool keyed by the socket, which every call reuses, 5 and 6.

On a unix socket the client also ignores the environment (``trust_env``): requests would read the
proxy variables and ``~/.netrc`` on every call (0.2-0.3 ms each, and the netrc module at idle)
for a socket no proxy or netrc entry can apply to.
"""

from __future__ import annotations

from typing import Any

import docker
from docker.constants import DEFAULT_DOCKER_API_VERSION
from docker.errors import DockerException
from docker.transport import UnixHTTPAdapter

#: the key of the one pool (the host part of docker-py's unix URLs)
POOL_KEY = "http+docker://localhost"


class SocketPoolAdapter(UnixHTTPAdapter):
    """``UnixHTTPAdapter`` with one pool for its socket, whatever the URL."""

    def get_connection(self, url: str | bytes, proxies: Any = None) -> Any:
        return super().get_connection(POOL_KEY, proxies)


class SocketPooledClient(docker.APIClient):
    """docker-py's low-level client; on a unix socket, with the one-pool adapter and without
    requests' environment lookups. Other transports (TLS, ssh, plain tcp) keep requests' own
    pools, keyed by host already, and its proxy settings."""

    def __init__(self, **options: Any) -> None:
        version = options.get("version")
        auto = version is None or version.lower() == "auto"
        # the server's version is asked for once the transport below is in place, not before
        super().__init__(**{**options, "version": DEFAULT_DOCKER_API_VERSION if auto else version})
        adapter = self.adapters.get("http+docker://")
        if type(adapter) is UnixHTTPAdapter:
            single = SocketPoolAdapter(
                f"http+unix://{adapter.socket_path}",
                adapter.timeout,
                pool_connections=1,
                max_pool_size=adapter.max_pool_size,
            )
            self._custom_adapter = single  # docker-py's fallback in get_adapter
            self.mount("http+docker://", single)
            adapter.close()
            self.trust_env = False
        if auto:
            try:
                self._version = self.version(api_version=False)["ApiVersion"]
            except Exception as e:  # docker-py's own wording, as its constructor words it
                raise DockerException(f"Error while fetching server API version: {e}") from e
