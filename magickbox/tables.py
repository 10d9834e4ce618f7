"""The one SQLAlchemy declarative base: every stage's tables are declared on it.

A bottom module so that each stage owns its tables (receive/rejections.py, jobs/db.py,
routing/models.py, study/models.py, auth/models.py) without importing another stage;
jobs/db.py opens the database and runs the migrations over all of them.
"""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass
