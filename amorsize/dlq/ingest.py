"""The fast lane for failures: workers hand DLQ entries to the manager over a framed socket.

```
 worker (capture() hook)                 manager process of a SharedDeadLetterQueue
 entry ─► its journal line (JSON,        accept thread: authenticate (HMAC challenge,
          records.encode_entry)            as multiprocessing.connection), hand over
 journaled: appends the line itself,     loop thread (one selector for all workers):
   [8-byte length|J][lines] ─────────►     read every ready connection, check each
   and returns: nothing to wait for        frame's framing (whole lines, each with an
 acked: [8-byte length][lines] ──────►     id); journaled lines: memory only; acked
        ◄───────────── [status byte] ◄──   ones: ONE journal write() for all, then
   and returns after the ack               one send of the acks per connection
```

Either way an entry is in the journal (its ``write()`` done) before its hook
returns. **Journaled** frames are the fast path (:mod:`amorsize.dlq.ingest_client`):
the worker appends its line to the journal as any writer of a shared journal does,
then tells the manager, which keeps the line in memory and answers nothing, so a
failure costs no round trip. No reader misses an entry whose hook returned: each
call that reads the queue first drains the lane (:meth:`~IngestServer.drain`; a
unix socket ``send()`` that returned has put its bytes in the receive queue).
**Acked** frames are the manager-writes path (pickle-format or deduplicating
queues, TCP lanes, a worker whose own append failed): one write for every frame
that arrived together (group commit), one ack per frame. Lines are kept as
:class:`JournalLine` (id and bytes), decoded on first read.

Status bytes: ``ACK`` (stored); ``NACK``, an 8-byte length and a UTF-8 reason (the
hook raises); ``READY``, once, when a new connection is in the loop's hands.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import socket
import struct
import threading
import time
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any, Callable, Dict, Iterable, List, Tuple

from amorsize.dlq._sockets import listen, unlink_quietly
from amorsize.dlq.entry import DLQEntry
from amorsize.dlq.records import decode_record, encode_entry, parse_line, record_id

logger = logging.getLogger("amorsize.dlq")

HEADER = struct.Struct("!Q")
#: Set in a frame's length field: its lines are in the journal already (the worker
#: appended them), so the manager only keeps them in memory and does not answer.
JOURNALED = 1 << 63
ACK = b"\x01"
NACK = b"\x00"
READY = b"\x02"
#: Bytes read from a ready connection at a time. Kept under glibc's mmap threshold
#: (128 KiB): a 1 MiB recv buffer cost an mmap+munmap, ~40 us, per message.
RECV_BYTES = 1 << 16
#: Seconds the loop rests after a round that only took in journaled frames, so the
#: frames of that time arrive together and are taken in by one wake-up: nobody waits
#: for them (readers drain the lane first), and a worker sending to a loop that is
#: not asleep in select() does not pay for waking it (~20-40 us of CPU in a VM).
#: Well under what a connection's socket buffer holds (~100 frames) at 20k/s.
JOURNALED_BATCH_SECONDS = 0.002
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


def frame(payload: bytes, *, journaled: bool = False) -> bytes:
    """``payload`` (whole journal lines) with its header."""
    return HEADER.pack(len(payload) | JOURNALED if journaled else len(payload)) + payload


def encode_entries(entries: List[DLQEntry]) -> bytes:
    """One acked frame (header included) carrying the journal lines of ``entries`` (items packed)."""
    return frame(b"".join([encode_entry(e, pickle_everything=False) for e in entries]))


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


@dataclasses.dataclass
class _Round:
    """What one pass over the ready connections collected."""

    acks: Dict[socket.socket, List[str | None]] = dataclasses.field(default_factory=dict)
    batch: List[JournalLine] = dataclasses.field(default_factory=list)
    owners: List[Tuple[socket.socket, int]] = dataclasses.field(default_factory=list)
    noted: List[JournalLine] = dataclasses.field(default_factory=list)


class IngestServer:
    """Accepts authenticated connections; ``store``s acked frames, ``note``s journaled ones.

    ``note`` (default: ``store``) receives lines a worker already appended to the
    journal: they must be kept in memory, never written again.
    """

    def __init__(
        self, address: Any, authkey: bytes, store: Callable[[List[JournalLine]], Any],
        note: Callable[[List[JournalLine]], Any] | None = None,
    ) -> None:
        self._sock = listen(address)
        self.address = self._sock.getsockname()
        self._authkey = authkey
        self._store = store
        self._note = note or store
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._arrivals: List[socket.socket] = []
        self._arrivals_lock = threading.Lock()
        # Held while frames are read and stored: by the loop, and by drain() in the
        # thread of a reader, so each frame is taken in once and in order.
        self._lock = threading.Lock()
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
        try:
            # Only now may the worker send: a drain() from here on sees its frames.
            sock.send(READY)
            self._wake_w.send(b"w")
        except OSError:
            pass  # the peer left, or the server closed: the loop drops it

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
            ready = self._selector.select()
            with self._lock:
                if self._closed:
                    return
                peers = []
                for key, _ in ready:
                    if key.data is None:
                        self._admit_arrivals()
                    else:
                        peers.append(key.data)
                rest = self._take_in(peers, drain=False)
            if rest:
                time.sleep(JOURNALED_BATCH_SECONDS)

    def drain(self) -> None:
        """Take in every frame already sent: a reader must see each entry whose hook returned."""
        with self._lock:
            if self._closed:
                return
            self._admit_arrivals()
            peers = [k.data for k in list(self._selector.get_map().values()) if k.data is not None]
            self._take_in(peers, drain=True)

    def _take_in(self, peers: Iterable[_Peer], *, drain: bool) -> bool:
        """Read ``peers``, note journaled lines, store the rest (one write), answer.

        Returns True when only journaled lines came (the loop may rest: nobody waits).
        """
        taken = _Round()
        for peer in peers:
            while self._read(peer, taken) and drain:
                pass  # a drain reads each connection dry; the loop comes back when ready
        if taken.noted:
            try:
                self._note(taken.noted)
            except Exception:  # they are on disk; only this manager's view lacks them
                logger.exception("DLQ ingest: could not keep %d journaled entries in memory",
                                 len(taken.noted))
        if taken.batch:
            try:
                self._store(taken.batch)
            except Exception as exc:
                reason = f"the manager could not store the entries ({type(exc).__name__}: {exc})"
                for sock, index in taken.owners:
                    taken.acks[sock][index] = reason
        for sock, results in taken.acks.items():
            self._reply(sock, results)
        return bool(taken.noted) and not taken.acks

    def _shut_down(self) -> None:
        """Close the listening socket and every connection: waiting workers see EOF."""
        with self._lock:
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

    def _read(self, peer: _Peer, taken: _Round) -> bool:
        """Read what ``peer`` sent and split it into frames; False when nothing was there."""
        try:
            data = peer.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._drop(peer.sock)
            return False
        buffer = peer.buffer
        buffer += data
        start = 0
        while len(buffer) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            journaled = size & JOURNALED
            end = start + HEADER.size + (size ^ journaled)
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:  # one copy of the payload, not two
                payload = bytes(view[start + HEADER.size:end])
            start = end
            self._frame(peer.sock, payload, bool(journaled), taken)
        del buffer[:start]
        return True

    def _frame(self, sock: socket.socket, payload: bytes, journaled: bool, taken: _Round) -> None:
        try:
            lines = decode_entries(payload)
        except Exception as exc:
            reason = f"the manager could not decode a frame ({type(exc).__name__}: {exc})"
            if journaled:  # nobody waits for an answer; the lines are in the journal
                logger.error("DLQ ingest: %s; its lines stay in the journal only", reason)
            else:
                taken.acks.setdefault(sock, []).append(reason)
            return
        if journaled:
            taken.noted.extend(lines)
            return
        results = taken.acks.setdefault(sock, [])
        taken.owners.append((sock, len(results)))
        taken.batch.extend(lines)
        results.append(None)

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
