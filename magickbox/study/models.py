"""The series table: one row per series of each job, made from the job's series views.

It lives in the one database (the declarative ``Base`` of ``jobs/db.py``) and its Alembic
migrations. A row keeps the view (series-level tags as JSON), ``NumFiles``, the
``ClassifyType`` the rules gave when the job was made, and the series' file names in
the job's INPUT: what a bucket's series manifest and completeness checks need.
"""

from __future__ import annotations

import time

from sqlalchemy import Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from magickbox.tables import Base


class SeriesRow(Base):
    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("scratchdir", "series_uid", name="uq_series_job"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scratchdir: Mapped[str] = mapped_column(String(64), index=True)  # the job
    study_uid: Mapped[str] = mapped_column(String(128), index=True)
    series_uid: Mapped[str] = mapped_column(String(128))
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(Text, default="")  # SeriesDescription
    num_files: Mapped[int] = mapped_column(Integer, default=0)
    classify_type: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of names
    tags: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the view's tags
    files: Mapped[str] = mapped_column(Text, default="[]")  # JSON: names relative to INPUT
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
