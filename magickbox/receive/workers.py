"""The native receiver's worker processes: the data transfer of associations, off the box's GIL.

Threads of one Python process share one interpreter lock, so several associations at
once were held to one core's worth of Python. The box still accepts and negotiates every
association (admission, the association limit and the disk reserve decide in one place);
then it hands a plain-TCP association to the least busy of ``receiver_processes`` worker
processes: the socket goes over a Unix socket (SCM_RIGHTS) with what was agreed, and the
worker runs the P-DATA phase with the same code a thread of the box runs
(``native.Association``). The worker writes, walks and moves each data set into its
arrival folder itself and answers the C-STORE only then, so a kill -9 of the box or a
worker loses nothing acknowledged.

The arrivals stay the box's (``grouping.Grouper``): a worker asks which arrival folder
the files of a study (and series) of an association go to, once, and tells the box of
every file it kept (its count, the series views), of the metrics and of the end of the
association, in order on its one channel. A worker that dies takes only its own
associations down: the box closes them, drops their arrivals' series views (the job
reads the headers instead) and forks a new worker.

Workers are forked from the box when the receiver starts. A fork copies the memory of a
process whose other threads are frozen mid-step, so the worker starts clean: every
inherited file descriptor but its channel and stderr is pointed at /dev/null (the box's
listeners, database and connections are not held open by it), the inherited objects are
frozen out of the garbage collector, the box's signal handlers are dropped, and its log
records go to the box to be logged there. It leaves with ``os._exit``, never through the
box's code, as soon as its channel closes (the box stopped or died). TLS associations
stay on the box's threads: a TLS session cannot move to another process.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from magickbox import disk
from magickbox.events import Event, EventBus, ImageReceived
from magickbox.jobs.scratch import StrPath
from magickbox.receive import acse
from magickbox.receive.grouping import ArrivalKey, Placed, Where, place_in
from magickbox.receive.intake import Intake, Peer
from magickbox.study.series import CHARSET_TAG, SERIES_UID_TAG, RawHeader

if TYPE_CHECKING:
    from magickbox.receive.native import Association, NativeReceiver

log = logging.getLogger(__name__)

MESSAGE = 1 << 18  # bytes a channel message may have (a header too large travels without)
HEADER_LIMIT = 1 << 16  # a file's captured elements larger than this are not sent (rare)
ANSWER_SECONDS = 30.0  # a worker waits this long for the box to name an arrival: else A700
CHANNEL_BUFFER = 1 << 20  # bytes each side of a channel may queue
LOG_LIMIT = 1 << 14  # characters of a worker's log line the box logs
STOP_SECONDS = 5.0  # a stop waits this long, at most, for each worker to be gone
RESPAWN_SECONDS = 1.0  # a worker that died sooner after its start is replaced this much later
# what a worker told the box of a series' elements: (implicit VR, little endian, character
# set), {tag: raw value} and {tag: VR}
Told = tuple[tuple[bool, bool, bytes | None], dict[int, bytes], dict[int, str | None]]
BATCH = 64  # kept files a worker tells the box of in one message, at most
BATCH_SECONDS = 0.1  # and at most this late


@dataclass(frozen=True)
class Handover:
    """What the box agreed with a peer, for the worker that carries the association on."""

    assoc_id: int
    peer: Peer
    port: int
    contexts: dict[int, acse.Answer]
    peer_max: int
    pending: bytes  # what the box had read past the association request


class Channel:
    """Pickled messages (and file descriptors) over one SOCK_SEQPACKET Unix socket.

    Both ends are this code in processes of one box: a message is a tuple whose first
    item says what it is. Sending is safe from several threads (one message is one
    sendmsg, which a SEQPACKET socket never interleaves)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, CHANNEL_BUFFER)

    def send(self, message: tuple[Any, ...], fds: list[int] | None = None) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        if len(data) > MESSAGE:
            raise OSError(f"a channel message of {len(data)} bytes (at most {MESSAGE})")
        with self.lock:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.send(data)

    def receive(self) -> tuple[tuple[Any, ...], list[int]] | None:
        """The next message and the descriptors that came with it; None once closed."""
        data, fds, flags, _addr = socket.recv_fds(self.sock, MESSAGE, 4)
        if not data or flags & socket.MSG_TRUNC:
            for fd in fds:
                os.close(fd)
        if not data:
            return None
        if flags & socket.MSG_TRUNC:  # a bug: said, and the channel goes on
            return ("dropped", len(data)), []
        return pickle.loads(data), fds

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


# -- the box's side ----------------------------------------------------------------------


@dataclass
class Worker:
    """One worker process as the box sees it: its channel and the associations it carries."""

    pid: int
    channel: Channel
    # assoc id -> the box's copy of its socket: the box closes it once the worker is done
    # with it, or shuts it down when the receiver stops
    carried: dict[int, socket.socket]
    started: float  # monotonic
    reader: threading.Thread | None = None  # the box's thread acting on its messages


class Pool:
    """The box's worker processes: forked at start, one thread here reading each."""

    def __init__(self, receiver: NativeReceiver, size: int) -> None:
        self.rx = receiver
        self.size = size
        self.workers: list[Worker] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.ids = itertools.count(1)

    def start(self) -> None:
        with self.lock:
            self.stopping = False
        for _ in range(self.size):
            self._fork()

    def _fork(self) -> None:
        """A new worker, unless the receiver is stopping (a stop may come while a dead
        worker's reader forks its successor)."""
        with self.lock:
            if self.stopping:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                with warnings.catch_warnings():  # 3.12+ warns of a fork with threads: see the top
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pid = os.fork()
            except OSError as exc:  # out of processes or memory: fewer workers (with none,
                ours.close()  # associations stay on the box's threads)
                theirs.close()
                log.error("could not start a receiver worker: %s", exc)
                return
            if pid == 0:  # the worker: never returns into the box's code
                code = 1
                try:
                    ours.close()
                    code = run_worker(self.rx, Channel(theirs))
                except BaseException:  # told on stderr, the one stream left to it
                    traceback.print_exc()
                finally:
                    os._exit(code)
            theirs.close()
            worker = Worker(pid, Channel(ours), {}, time.monotonic())
            self.workers.append(worker)
        worker.reader = threading.Thread(
            target=self._read, args=(worker,), name=f"dicom-worker-{pid}", daemon=True
        )
        worker.reader.start()

    def stop(self) -> None:
        """End every worker and wait (a little) until each is gone and cleaned up after,
        so that a start right after (the heartbeat's restart) finds none still writing."""
        with self.lock:
            self.stopping = True
            workers, self.workers = self.workers, []
            carried = [conn for worker in workers for conn in worker.carried.values()]
        for conn in carried:  # the workers see their reads fail
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for worker in workers:
            worker.channel.close()  # and leave
        for worker in workers:
            if worker.reader is not None:
                worker.reader.join(STOP_SECONDS)

    def hand_over(self, association: Association) -> bool:
        """Give ``association`` (associated, plain TCP) to the least busy worker; False if
        there is none (it then goes on in the calling thread)."""
        with self.lock:
            if not self.workers:
                return False
            worker = min(self.workers, key=lambda w: len(w.carried))
            assoc_id = next(self.ids)
            worker.carried[assoc_id] = association.raw
        association.id = assoc_id
        handover = Handover(assoc_id, association.peer, association.port, association.contexts,
                            association.peer_max, association.unread())  # fmt: skip
        try:
            worker.channel.send(("take", handover), [association.raw.fileno()])
        except OSError:
            log.exception("could not hand an association to worker %d", worker.pid)
            with self.lock:
                ours = worker.carried.pop(assoc_id, None) is not None
            # Else the worker died meanwhile and its reader ended the association already.
            return not ours
        return True

    def _read(self, worker: Worker) -> None:
        """Act on a worker's messages until its channel closes; then clean up after it.

        A message that cannot be acted on is logged and skipped; a channel that fails is
        the worker's end (it is killed: a worker the box no longer hears must not go on)."""
        try:
            while (got := worker.channel.receive()) is not None:
                try:
                    self._act(worker, got[0])
                except Exception:
                    log.exception("receiver worker %d: a message not acted on", worker.pid)
        except Exception:
            log.exception("receiver worker %d: its channel failed", worker.pid)
            with contextlib.suppress(OSError):
                os.kill(worker.pid, signal.SIGKILL)
        finally:
            self._gone(worker)

    def _act(self, worker: Worker, message: tuple[Any, ...]) -> None:
        kind, grouper = message[0], self.rx.grouper
        if kind == "notes":
            for note in message[1]:
                if note[0] == "file":
                    _kind, key, kept, header = note
                    grouper.file_added(key, kept, header)
                else:
                    self.rx.intake.events.publish(note[1])
        elif kind == "where":
            _kind, request, assoc_id, key, series_uid, src = message
            try:
                where: Where | str = grouper.open_arrival(assoc_id, key, series_uid, src)
            except OSError as exc:  # a full disk: that data set is answered A700
                where = str(exc)
            worker.channel.send(("at", request, where))
        elif kind == "closed":
            self._closed(worker, message[1], lost=False)
        elif kind == "disk":  # a worker found the disk below the reserve (or back above)
            disk.guard_for(self.rx.settings).learn(message[1])
        elif kind == "log":
            _kind, name, level, text = message
            logging.getLogger(name).log(level, "%s", text)
        elif kind == "dropped":
            log.error("receiver worker %d sent a message of %d bytes: dropped", worker.pid,
                      message[1])  # fmt: skip

    def _closed(self, worker: Worker, assoc_id: int, lost: bool) -> None:
        with self.lock:
            conn = worker.carried.pop(assoc_id, None)
        if lost:
            self.rx.grouper.association_lost(assoc_id)
        else:
            self.rx.grouper.association_closed(assoc_id)
        self.rx.give_slot()
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
            self.rx.forget(conn)

    def _gone(self, worker: Worker) -> None:
        """A worker's channel closed: its associations end, its unfinished files go, and a
        new worker takes its place unless the receiver is stopping."""
        with self.lock:
            replace = worker in self.workers and not self.stopping
            if worker in self.workers:
                self.workers.remove(worker)  # nothing more is handed to it
        worker.channel.close()  # a live worker leaves once its channel is closed
        with contextlib.suppress(ChildProcessError):
            os.waitpid(worker.pid, 0)
        for assoc_id in list(worker.carried):  # only now: it can no longer add a file
            self._closed(worker, assoc_id, lost=True)
        for part in self.rx.partial.glob(f"{worker.pid}-*.part"):  # never acknowledged
            part.unlink(missing_ok=True)
        if replace:
            log.error("receiver worker %d ended; starting another", worker.pid)
            if time.monotonic() - worker.started < RESPAWN_SECONDS:
                time.sleep(RESPAWN_SECONDS)  # one that dies at once must not spin the box
            self._fork()


# -- the worker's side -------------------------------------------------------------------


class Remote(EventBus):
    """The worker's stand-in for the box's grouper (``intake.Keeper``) and event bus.

    What the box is told of kept files (for counts, views and metrics) is gathered and
    sent a batch at a time, at most ``BATCH_SECONDS`` late: waking the box for every image
    would cost more than the image. Nothing depends on it sooner: an arrival cannot become
    a job while an association is open, and an association's end is sent after its files.
    """

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel
        self.requests = itertools.count(1)
        self.waiting: dict[int, tuple[threading.Event, list[Where | str]]] = {}
        self.lock = threading.Lock()
        # assoc id -> (key, series UID or None) -> where its files go, asked once; each
        # association's own dictionary is used by its thread only
        self.known: dict[int, dict[tuple[ArrivalKey, str | None], Where]] = {}
        # assoc id -> (key, series UID) -> what the box was told of that series' elements:
        # (the encoding and character set, {tag: (value, VR)})
        self.told: dict[int, dict[tuple[ArrivalKey, str], Told]] = {}
        self.notes: list[tuple[Any, ...]] = []  # ("file", key, kept, header)
        self.noted = 0  # bytes of headers among them
        self.received: dict[tuple[str, str], list[int]] = {}  # (calling, called) -> [n, bytes]
        # A plain lock and an event, not a Condition: a Condition's enter, exit and notify
        # are Python calls, paid per image; the event is set once per batch.
        self.batch_lock = threading.Lock()
        self.wake = threading.Event()  # something is pending: the flusher sends it soon
        threading.Thread(target=self._flusher, name="dicom-notes", daemon=True).start()

    def place(
        self, assoc_id: int, key: ArrivalKey, src: StrPath, name: str, header: RawHeader | None
    ) -> Placed:
        """As Grouper.place: the file moves into the arrival the box named, before it is
        acknowledged."""
        series_uid = header.series_uid if header is not None else None
        where = self._where(assoc_id, key, series_uid, src)
        return Placed(assoc_id, where.key, place_in(where, src, name), header)

    def record(self, placed: Placed) -> None:
        """As Grouper.record: the box is told of the file (in the next batch)."""
        header = placed.header
        if header is not None and header.series_uid:
            header = self._news(placed.assoc_id, placed.key, header.series_uid, header)
        size = sum(map(len, header.values.values())) if header is not None else 0
        if size > HEADER_LIMIT:
            header, size = None, 0  # its arrival's views are then read from the files by the job
        self._note(("file", placed.key, placed.kept, header), size)

    def publish(self, event: Event) -> None:
        if isinstance(event, ImageReceived):  # the one event a receiver publishes: summed
            with self.batch_lock:
                first = not self.notes and not self.received
                counts = self.received.setdefault((event.caller_aet, event.called_aet), [0, 0])
                counts[0] += event.images
                counts[1] += event.nbytes
            if first:
                self.wake.set()

    def _news(
        self, assoc_id: int, key: ArrivalKey, series_uid: str, header: RawHeader
    ) -> RawHeader:
        """The elements of ``header`` that this association has not told the box of already
        for this series, in the same bytes, VR, encoding and character set.

        A series view keeps the first non-empty value of each tag, and the same bytes
        decode alike: an element told again cannot change the view. After a series' first
        file, the box is told (and unpickles and looks at) hardly more than its series UID.
        """
        told = self.told.setdefault(assoc_id, {})
        values, vrs = header.values, header.vrs
        encoding = (header.implicit, header.little, values.get(CHARSET_TAG))
        before = told.get((key, series_uid))
        if before is None or before[0] != encoding:
            told[(key, series_uid)] = (encoding, dict(values), {t: vrs.get(t) for t in values})
            return header
        _encoding, seen, seen_vrs = before
        if values == seen and vrs == seen_vrs:  # most files: as the last one told, at C speed
            fresh = []
        else:
            fresh = [
                t for t, v in values.items() if seen.get(t) != v or seen_vrs.get(t) != vrs.get(t)
            ]
            for tag in fresh:
                seen[tag], seen_vrs[tag] = values[tag], vrs.get(tag)
        # the series UID names the view; the character set decodes what is told with it
        fresh.extend(t for t in (SERIES_UID_TAG, CHARSET_TAG) if t in values and t not in fresh)
        return RawHeader({t: values[t] for t in fresh}, {t: vrs.get(t) for t in fresh},
                         header.implicit, header.little)  # fmt: skip

    def association_closed(self, assoc_id: int) -> None:
        self.known.pop(assoc_id, None)
        self.told.pop(assoc_id, None)
        self.flush()  # its files first
        self.channel.send(("closed", assoc_id))

    def _note(self, note: tuple[Any, ...], size: int) -> None:
        with self.batch_lock:
            first = not self.notes and not self.received
            self.notes.append(note)
            self.noted += size
            full = len(self.notes) >= BATCH or self.noted >= HEADER_LIMIT
        if first:
            self.wake.set()
        if full:
            self.flush()

    def flush(self) -> None:
        with self.batch_lock:
            notes, self.notes, self.noted = self.notes, [], 0
            received, self.received = self.received, {}
            notes += [("event", ImageReceived(calling, called, nbytes, images))
                      for (calling, called), (images, nbytes) in received.items()]  # fmt: skip
            if notes:  # sent under the lock: batches keep their order
                self.channel.send(("notes", notes))

    def _flusher(self) -> None:
        while True:
            self.wake.wait()
            time.sleep(BATCH_SECONDS)
            # Cleared before the flush: what comes after it finds nothing pending and sets
            # the event again; what comes between is in this flush.
            self.wake.clear()
            self.flush()

    def _where(
        self, assoc_id: int, key: ArrivalKey, series_uid: str | None, src: StrPath
    ) -> Where:
        known = self.known.setdefault(assoc_id, {})
        where = known.get((key, None)) or known.get((key, series_uid))
        if where is not None:
            return where
        where = self._ask(("where", assoc_id, key, series_uid, str(src)))
        if not where.per_series:
            known[(key, None)] = where
        elif series_uid:  # a file without its series UID here is asked about each time
            known[(key, series_uid)] = where
        return where

    def _ask(self, message: tuple[Any, ...]) -> Where:
        request = next(self.requests)
        done, answer = threading.Event(), list[Where | str]()
        with self.lock:
            self.waiting[request] = (done, answer)
        self.channel.send((message[0], request, *message[1:]))
        if not done.wait(ANSWER_SECONDS):
            with self.lock:
                self.waiting.pop(request, None)
            raise OSError("the box did not name the arrival in time")
        result = answer[0]
        if isinstance(result, str):  # the box could not make the arrival
            raise OSError(result)
        return result

    def answered(self, request: int, where: Where | str) -> None:
        with self.lock:
            done, answer = self.waiting.pop(request, (None, list[Where | str]()))
        if done is not None:
            answer.append(where)
            done.set()


class ToBox(logging.Handler):
    """Log records of the worker, logged by the box (its handlers, its format)."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            if len(text) > LOG_LIMIT:  # a peer's value quoted in a refusal, say
                text = text[:LOG_LIMIT] + f" ... ({len(text) - LOG_LIMIT} characters more)"
            self.channel.send(("log", record.name, record.levelno, text))
        except Exception:  # the box is gone: nobody to tell
            pass


def _start_clean(channel: Channel) -> None:
    """Let go of what the fork copied from the box (see the module's docstring)."""
    keep = {channel.sock.fileno(), 2}
    null = os.open(os.devnull, os.O_RDWR)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep and fd != null:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    os.close(null)
    gc.freeze()  # the box's objects: never scanned, so their pages stay shared
    # The box's standard streams may have been locked by one of its threads at the fork.
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops the box, which stops us
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(ToBox(channel))


def run_worker(receiver: NativeReceiver, channel: Channel) -> int:
    """The worker's life: carry on each association the box hands over, until the box
    closes the channel; the exit code."""
    from magickbox.receive.native import Association

    _start_clean(channel)
    # The copy's locks may have been held by a thread of the box at the fork: new ones.
    receiver.lock, receiver.connections, receiver.associated = threading.Lock(), set(), 0
    disk.on_change = lambda low: channel.send(("disk", low))
    remote = Remote(channel)
    receiver.grouper = remote  # type: ignore[assignment]  # what the association calls
    receiver.intake = Intake(receiver.settings.aet, remote, remote, receiver.settings.series_views)
    carried: dict[int, socket.socket] = {}
    while True:
        try:
            got = channel.receive()
        except OSError:
            got = None
        if got is None:  # the box stopped or died: what is under way ends unanswered
            for conn in list(carried.values()):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            return 0
        message, fds = got
        if message[0] == "at":
            remote.answered(message[1], message[2])
        elif message[0] == "take":
            handover: Handover = message[1]
            conn = socket.socket(fileno=fds[0])
            carried[handover.assoc_id] = conn
            association = Association.carried(receiver, conn, handover)
            threading.Thread(
                target=_carry, args=(association, carried), name="dicom-carried", daemon=True
            ).start()


def _carry(association: Association, carried: dict[int, socket.socket]) -> None:
    try:
        association.carry_on()
    finally:
        carried.pop(association.id, None)
