"""What a user sees from the Dask plugin: a clear error for a bad address, named crashes, a quiet cluster."""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("distributed")
pytest.importorskip("amorsize_dask")

from amorsize_dask import DaskBackend, DaskConnectError

from amorsize import AmorsizeError, execute
from amorsize.errors import InvalidArgumentError


def _closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(60)
def test_a_bad_address_raises_an_amorsize_error_naming_it_within_the_connect_timeout() -> None:
    address = f"tcp://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(DaskConnectError) as caught:
        execute(abs, [1, 2], backend=DaskBackend(address=address, connect_timeout=1))
    elapsed = time.monotonic() - started
    assert isinstance(caught.value, AmorsizeError) and isinstance(caught.value, ConnectionError)
    assert address in str(caught.value) and "connect_timeout=1s" in str(caught.value)
    assert elapsed < 20, f"took {elapsed:.1f}s; the default connect timeout is 30s"


@pytest.mark.parametrize("value", [0, -1, float("nan"), "10"])
def test_a_bad_connect_timeout_is_refused(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="connect_timeout"):
        DaskBackend(address="tcp://127.0.0.1:8786", connect_timeout=value)  # type: ignore[arg-type]
