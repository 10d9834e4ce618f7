"""Refused associations, recorded durably: who tried to reach which AE title, and why not.

Every association the receiver refuses (an unknown called AE title, a caller not on the
allow-list, the box's own title used for storage, a failed TLS handshake) becomes a row of
``rejections`` in the one database, shown newest first by ``GET /api/v1/rejections`` and
the page. Only ``receive/`` writes the table.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Integer, String, Text, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from magickbox.tables import Base

log = logging.getLogger(__name__)

# Column sizes; longer values (a hostile peer's garbage) are cut, never refused by the database.
AET_LEN, ADDRESS_LEN, REASON_LEN = 64, 64, 2000
# A peer retrying in a loop must not fill the disk: only the newest rows are kept, trimmed
# every TRIM_EVERY records (so a flood costs one DELETE per hundred refusals).
KEEP_ROWS, TRIM_EVERY = 100_000, 100


class RejectionRow(Base):
    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    calling_aet: Mapped[str] = mapped_column(String(AET_LEN), default="")
    called_aet: Mapped[str] = mapped_column(String(AET_LEN), default="")
    address: Mapped[str] = mapped_column(String(ADDRESS_LEN), default="")
    port: Mapped[int] = mapped_column(Integer, default=0)  # the box's port it came to
    reason: Mapped[str] = mapped_column(Text, default="")


@dataclass(frozen=True)
class Rejection:
    calling_aet: str
    called_aet: str
    address: str
    port: int
    reason: str


class RejectionLog:
    def __init__(self, sessions: sessionmaker[Session], keep: int = KEEP_ROWS) -> None:
        self.sessions = sessions
        self.keep = keep
        self._recorded = 0  # records since the start, for trimming now and then

    def record(self, rejection: Rejection) -> None:
        """Store one refusal; a database error is logged, never raised into the receiver."""
        row = RejectionRow(
            at=time.time(),
            calling_aet=rejection.calling_aet[:AET_LEN],
            called_aet=rejection.called_aet[:AET_LEN],
            address=rejection.address[:ADDRESS_LEN],
            port=rejection.port,
            reason=rejection.reason[:REASON_LEN],
        )
        try:
            with self.sessions.begin() as s:
                s.add(row)
                s.flush()
                self._recorded += 1
                if self._recorded % TRIM_EVERY == 0:
                    s.execute(delete(RejectionRow).where(RejectionRow.id <= row.id - self.keep))
        except Exception:  # the refusal itself already happened; losing its record is all
            log.exception("could not record a refused association: %s", rejection)

    def page(self, limit: int, offset: int) -> dict[str, Any]:
        """Refusals newest first, a page at a time, with the total count."""
        query = select(RejectionRow).order_by(RejectionRow.id.desc()).offset(offset).limit(limit)
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(RejectionRow)) or 0
            rows = [view(row) for row in s.scalars(query)]
        return {"total": total, "limit": limit, "offset": offset, "rejections": rows}


def view(row: RejectionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at,
        "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.at)),
        "calling_aet": row.calling_aet,
        "called_aet": row.called_aet,
        "address": row.address,
        "port": row.port,
        "reason": row.reason,
    }


# Fixed labels of refusals, by what the reason says (the metrics count by these: few and
# stable, where reasons name titles and addresses).
LABELS = (
    ("no enabled bucket", "called_aet_unknown"),
    ("own AE title", "own_aet_storage"),
    ("allow-list", "caller_not_allowed"),
    ("TLS handshake", "tls_handshake"),
    ("associations are open", "too_many_associations"),
    ("disk", "disk_reserve"),
)


def rejection_label(reason: str) -> str:
    return next((label for text, label in LABELS if text in reason), "other")
