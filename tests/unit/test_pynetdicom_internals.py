"""The pynetdicom internals the routing sender relies on (``routing/dimse.py``, the only
module that touches them).

The sender lets pynetdicom negotiate, then parks its reactor thread and runs the
transfer phase on the socket itself. That uses private attributes; this test names each
one, so a pynetdicom upgrade that moves them fails here, loudly, and not in a hospital.
pyproject.toml pins the minor version this was checked with.
"""

from __future__ import annotations

import threading

import pytest
from pynetdicom import AE, __version__
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider


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

    internals = ("_reactor_checkpoint", "_is_paused", "_kill_thread", "._kill")
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
