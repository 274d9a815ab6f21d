"""One connection pool per Docker socket for docker-py's unix transport.

docker-py's ``UnixHTTPAdapter`` keys its connection pools by the whole request URL, path and
query included: every distinct call (``/containers/<id>/restart``, ``/containers/json?limit=5``)
gets a pool of its own, with its own kept-alive connection to dockerd, up to 25 pools per
client. After the bench's reconnect storm (100 restarts over 10 containers) the agent held 70
pools and 71 sockets; with one pool keyed by the socket, which every call reuses, 5 and 6.
"""

from __future__ import annotations

from typing import Any

import docker
from docker.transport import UnixHTTPAdapter

#: the key of the one pool (the host part of docker-py's unix URLs)
POOL_KEY = "http+docker://localhost"


class SocketPoolAdapter(UnixHTTPAdapter):
    """``UnixHTTPAdapter`` with one pool for its socket, whatever the URL."""

    def get_connection(self, url: str | bytes, proxies: Any = None) -> Any:
        return super().get_connection(POOL_KEY, proxies)


class SocketPooledClient(docker.APIClient):
    """docker-py's low-level client; on a unix socket, with the one-pool adapter. Other
    transports (TLS, ssh, plain tcp) keep requests' own pools, keyed by host already."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
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
