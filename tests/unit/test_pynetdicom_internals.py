"""The pynetdicom internals the routing sender relies on (``routing/dimse.py``, the only
module that touches them).

The sender lets pynetdicom negotiate, then parks its reactor thread and runs the
transfer phase on the socket itself. That uses private attributes; this test names each
one, so a pynetdicom upgrade that moves them fails here, loudly, and not in a hospital.
pyproject.toml pins the minor version this was checked with.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

import pytest
from pynetdicom import AE, __version__
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from tests.conftest import late_requestor_threads


@pytest.fixture
def assoc() -> Association:
    return Association(AE(), mode="requestor")


@pytest.mark.parametrize(
    ("name", "kind"),
    [("_reactor_checkpoint", threading.Event), ("_is_paused", bool), ("_kill", bool)],
)
def test_association_internals_are_where_the_sender_expects(
    assoc: Association, name: str, kind: type
) -> None:
    assert hasattr(assoc, name), (
        f"pynetdicom {__version__}: Association.{name} is gone; routing/dimse.py parks the "
        "reactor with it. Check dimse._park_threads before upgrading pynetdicom."
    )
    assert isinstance(getattr(assoc, name), kind), f"Association.{name} is no {kind.__name__}"


def test_the_dul_thread_can_still_be_told_to_end(assoc: Association) -> None:
    dul = assoc.dul
    assert isinstance(dul, DULServiceProvider)
    assert hasattr(dul, "_kill_thread"), (
        f"pynetdicom {__version__}: DULServiceProvider._kill_thread is gone; routing/dimse.py "
        "ends pynetdicom's DUL thread with it."
    )
    assert dul.socket is None or hasattr(dul.socket, "socket")


def test_the_pinned_minor_version_is_installed() -> None:
    assert __version__.startswith("3.0."), (
        f"pynetdicom {__version__} is installed; the sender's use of its internals was "
        "checked with 3.0.x (see pyproject.toml)"
    )


def test_only_dimse_touches_the_internals() -> None:
    from pathlib import Path

    import magickbox.routing

    internals = ("_reactor_checkpoint", "_is_paused", "_kill_thread", "._kill", "to_user_queue")
    package = Path(magickbox.routing.__file__).parent
    touching = sorted(
        path.name
        for path in package.glob("*.py")
        if any(name in path.read_text() for name in internals)
    )
    assert touching == ["dimse.py"], f"pynetdicom internals used outside dimse.py: {touching}"


def test_the_receivers_data_set_file_is_made_where_the_disk_guard_expects() -> None:
    """disk.py puts its GuardedTemporaryFile in place of the NamedTemporaryFile that
    pynetdicom's C-STORE decoder writes an incoming data set to; it must still be there."""
    import inspect

    from pynetdicom import dimse_messages

    assert hasattr(dimse_messages, "NamedTemporaryFile"), (
        f"pynetdicom {__version__}: dimse_messages.NamedTemporaryFile is gone; "
        "disk.guard_dataset_writes replaces it (a full disk must answer A700)."
    )
    source = inspect.getsource(dimse_messages.DIMSEMessage.decode_msg)
    assert "NamedTemporaryFile(" in source and "._data_set_file.file.flush()" in source


def _reject_at_once(listener: socket.socket) -> None:
    """An acceptor that answers every A-ASSOCIATE-RQ with an RJ at once, then waits."""
    conn, _ = listener.accept()
    with conn:
        header = conn.recv(6, socket.MSG_WAITALL)
        conn.recv(struct.unpack(">I", header[2:])[0], socket.MSG_WAITALL)
        conn.sendall(bytes([0x03, 0, 0, 0, 0, 4, 0, 1, 1, 7]))  # permanent, called AE
        conn.settimeout(5)
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass


def test_a_rejection_pynetdicom_reports_as_an_abort_is_still_a_rejection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pynetdicom 3.0 looks at its connection only once its ACSE thread runs again after
    the connect: if the RJ came (and closed the connection) before, it says "aborted"
    and leaves the RJ in its queue. dimse.rejected reads it there."""
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from magickbox.routing import dimse

    late_requestor_threads(monkeypatch, 0.3)
    listener = socket.create_server(("127.0.0.1", 0))
    peer = threading.Thread(target=_reject_at_once, args=(listener,), daemon=True)
    peer.start()
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.getsockname()[1], ae_title="NOBODY")
    peer.join(10)
    listener.close()
    assert not assoc.is_rejected and not assoc.is_established  # the race, as it is
    assert dimse.rejected(assoc)
    monkeypatch.undo()
    accepted = Association(AE(), mode="requestor")
    assert not dimse.rejected(accepted)


def test_a_thread_waiting_on_an_event_is_one_of_its_waiters() -> None:
    """dimse.park_reactor knows pynetdicom's thread is parked from the checkpoint Event's
    condition's waiters (CPython's threading): that must still hold."""
    event = threading.Event()
    assert not event._cond._waiters  # type: ignore[attr-defined]
    waiter = threading.Thread(target=event.wait, daemon=True)
    waiter.start()
    for _ in range(2000):
        if event._cond._waiters:  # type: ignore[attr-defined]
            break
        threading.Event().wait(0.001)
    assert event._cond._waiters, "a thread in Event.wait is not among its condition's waiters"  # type: ignore[attr-defined]
    event.set()
    waiter.join(5)
    assert not event._cond._waiters  # type: ignore[attr-defined]
