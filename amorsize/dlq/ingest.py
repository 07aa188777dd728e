"""The manager's lane for failures it writes itself: workers send journal lines, it acks.

```
 worker (capture() hook)                  manager process of a SharedDeadLetterQueue
 ───────────────────────                  ──────────────────────────────────────────
 entry ─► its journal line (JSON,          accept thread: authenticate (HMAC challenge,
          records.encode_entry)              as multiprocessing.connection), hand over
        [8-byte length][lines] ─────────►  loop thread (one selector for all workers):
                                             read every ready connection, check the
                                             framing of every complete frame (whole
                                             lines, each with an id), ONE store for all
                                             of them (ONE journal write() of the bytes
                                             as they came), then
        ◄─────────────── [status byte] ◄──   one send of the acks per connection
 the hook returns only after the ack,
 so the entry is in the kernel first
```

Most failures never come here: a hook appends its line to the journal itself and
the manager reads it from there (:mod:`amorsize.dlq.tail`). This lane takes the
rest (pickle-format or deduplicating queues, TCP lanes, a worker whose own append
failed), and its open connection tells a worker that the queue is still open
(:meth:`~amorsize.dlq.ingest_client.IngestClient.gone`). The manager appends the
bytes it gets without decoding them and keeps each entry as a :class:`JournalLine`
(the id, read from the line's fixed prefix, and the bytes), decoded on first read.
When several workers send at once their frames are stored with one append and
acknowledged with one send per worker: a group commit, one wake-up per batch.

Status bytes: ``ACK`` for a stored frame; ``NACK`` then an 8-byte length and a UTF-8
message when the manager could not decode or store it (the hook raises then).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import socket
import struct
import threading
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any, Callable, Dict, List, Tuple

from amorsize.dlq._sockets import listen, unlink_quietly
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.records import decode_record, encode_entry, parse_line, record_id

logger = logging.getLogger("amorsize.dlq")

HEADER = struct.Struct("!Q")
ACK = b"\x01"
NACK = b"\x00"
#: Bytes read from a ready connection at a time. Kept under glibc's mmap threshold
#: (128 KiB): a 1 MiB recv buffer cost an mmap+munmap, ~40 us, per message.
RECV_BYTES = 1 << 16
#: Seconds a new connection has to complete the authentication handshake.
HANDSHAKE_TIMEOUT_SECONDS = 10
#: Seconds the manager waits to hand an acknowledgement to a worker that does not read.
REPLY_TIMEOUT_SECONDS = 10.0

_NEWLINE = b"\n"


class JournalLine:
    """An entry as the journal line a worker encoded; decoded only when someone reads it."""

    __slots__ = ("entry_id", "line")

    def __init__(self, entry_id: str, line: bytes) -> None:
        self.entry_id = entry_id
        self.line = line

    def entry(self) -> DLQEntry:
        """The entry; pickled values stay bytes (:class:`~amorsize.serialization.PickledValue`)."""
        record = parse_line(self.line)
        if record is None:
            raise ValueError(f"entry {self.entry_id}: its journal line is not a DLQ record")
        return decode_record(record, allow_pickle=True, lazy=True)


def encode_entries(entries: List[DLQEntry]) -> bytes:
    """One frame (header included) carrying the journal lines of ``entries`` (items packed)."""
    payload = b"".join([encode_entry(e, pickle_everything=False) for e in entries])
    return HEADER.pack(len(payload)) + payload


def decode_entries(payload: bytes) -> List[JournalLine]:
    """Split a frame's payload into its lines, checking the framing only.

    Raises:
        ValueError: not whole lines, or a line without the id prefix of a journal record.
    """
    lines = payload.splitlines(keepends=True)
    if not lines:
        raise ValueError("an empty frame")
    out = []
    for line in lines:
        entry_id = record_id(line)
        if entry_id is None or not line.endswith(_NEWLINE):
            raise ValueError("a frame holds something other than whole journal records")
        out.append(JournalLine(entry_id, line))
    return out


class IngestError(Exception):
    """The manager received a frame but could not store it; carries its reason."""


def ingest_address_for(address: Any) -> Any:
    """Where the lane listens, next to the manager's own ``address``."""
    if isinstance(address, tuple):
        return (address[0], 0)
    return f"{address}.ingest"


# --- server (in the manager process) ---------------------------------------------


@dataclasses.dataclass
class _Peer:
    sock: socket.socket
    buffer: bytearray = dataclasses.field(default_factory=bytearray)


class IngestServer:
    """Accepts authenticated connections and stores every frame they send with ``store``."""

    def __init__(self, address: Any, authkey: bytes, store: Callable[[List[JournalLine]], Any]) -> None:
        self._sock = listen(address)
        self.address = self._sock.getsockname()
        self._authkey = authkey
        self._store = store
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._arrivals: List[socket.socket] = []
        self._arrivals_lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        for target, name in ((self._accept_forever, "accept"), (self._serve_forever, "serve")):
            threading.Thread(target=target, name=f"amorsize-ingest-{name}", daemon=True).start()

    def close(self) -> None:
        """Stop accepting and serving, and close every connection (the manager just exits)."""
        self._closed = True
        self._stop_listening()
        try:
            self._wake_w.send(b"w")
        except OSError:
            pass  # the serving loop already ended

    def _stop_listening(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
        except OSError:
            pass
        self._sock.close()
        if isinstance(self.address, str):
            unlink_quietly(self.address)

    # accepting --------------------------------------------------------------------

    def _accept_forever(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return  # the listening socket was closed
            # The handshake runs on its own thread, so a silent peer stalls nobody.
            threading.Thread(target=self._authenticate, args=(client,), daemon=True).start()

    def _authenticate(self, client: socket.socket) -> None:
        client.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", HANDSHAKE_TIMEOUT_SECONDS, 0)
        )
        conn = Connection(client.detach())
        try:
            deliver_challenge(conn, self._authkey)
            answer_challenge(conn, self._authkey)
            sock = socket.socket(fileno=os.dup(conn.fileno()))
        except Exception as exc:  # wrong key, timeout, peer gone: drop it
            logger.debug("DLQ ingest: refused a connection (%s: %s)", type(exc).__name__, exc)
            return
        finally:
            conn.close()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0))
        sock.setblocking(False)
        with self._arrivals_lock:
            self._arrivals.append(sock)
        self._wake_w.send(b"w")

    # serving ----------------------------------------------------------------------

    def _serve_forever(self) -> None:
        try:
            self._serve()
        except Exception:  # a bug here must not leave workers waiting for acks forever
            logger.exception("DLQ ingest: the serving loop failed; closing every connection")
        finally:
            self._shut_down()

    def _serve(self) -> None:
        while True:
            acks: Dict[socket.socket, List[str | None]] = {}
            batch: List[JournalLine] = []
            owners: List[Tuple[socket.socket, int]] = []
            for key, _ in self._selector.select():
                if key.data is None:
                    if self._closed:
                        return
                    self._admit_arrivals()
                else:
                    self._read(key.data, acks, batch, owners)
            if batch:
                try:
                    self._store(batch)
                except Exception as exc:
                    reason = f"the manager could not store the entries ({type(exc).__name__}: {exc})"
                    for sock, index in owners:
                        acks[sock][index] = reason
            for sock, results in acks.items():
                self._reply(sock, results)

    def _shut_down(self) -> None:
        """Close the listening socket and every connection: waiting workers see EOF."""
        self._closed = True
        self._stop_listening()
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        self._wake_w.close()

    def _admit_arrivals(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._arrivals_lock:
            arrivals, self._arrivals = self._arrivals, []
        for sock in arrivals:
            self._selector.register(sock, selectors.EVENT_READ, _Peer(sock))

    def _read(
        self,
        peer: _Peer,
        acks: Dict[socket.socket, List[str | None]],
        batch: List[JournalLine],
        owners: List[Tuple[socket.socket, int]],
    ) -> None:
        try:
            data = peer.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(peer.sock)
            return
        buffer = peer.buffer
        buffer += data
        start = 0
        results = acks.setdefault(peer.sock, [])
        while len(buffer) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            end = start + HEADER.size + size
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:  # one copy of the payload, not two
                payload = bytes(view[start + HEADER.size:end])
            try:
                entries = decode_entries(payload)
            except Exception as exc:
                results.append(f"the manager could not decode a frame ({type(exc).__name__}: {exc})")
            else:
                owners.append((peer.sock, len(results)))
                batch.extend(entries)
                results.append(None)
            start = end
        del buffer[:start]

    def _reply(self, sock: socket.socket, results: List[str | None]) -> None:
        if not results:
            return
        if results.count(None) == len(results):
            out: bytes | bytearray = ACK * len(results)  # the usual case: one small bytes
        else:
            out = bytearray()
            for reason in results:
                if reason is None:
                    out += ACK
                else:
                    text = reason.encode("utf-8", "replace")
                    out += NACK + HEADER.pack(len(text)) + text
        try:
            sent = sock.send(out)  # a few bytes into an empty socket buffer: sent at once
            if sent < len(out):
                sock.settimeout(REPLY_TIMEOUT_SECONDS)  # a peer that does not read its acks
                sock.sendall(out[sent:])
                sock.setblocking(False)
        except OSError:  # BlockingIOError included
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
