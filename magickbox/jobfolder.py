"""One job's folder: the layout users' scripts know, spelled out here and nowhere else.

Layout (the original's)::

    scratch/tmp.XXXXXXXX/INPUT/          the images of this send (hard links into the archive)
    scratch/tmp.XXXXXXXX/OUTPUT/         what the bucket wrote
    scratch/tmp.XXXXXXXX/info.json       CallerIP, AETitleCalled, AETitleCaller, received
    scratch/tmp.XXXXXXXX/processing.log  the bucket's stdout and stderr, and the box's marked lines
    scratch/tmp.XXXXXXXX/proc.json       the bucket's verdict ({"success": ...})
    scratch/tmp.XXXXXXXX/measures.json   the bucket's measures ($MB_MEASURES; or in OUTPUT)
    scratch/tmp.XXXXXXXX/series.json     the INPUT's series ($MB_SERIES_JSON), written at each start
    scratch/tmp.XXXXXXXX/.mb-job.json    the facts to rebuild the job's row after a crash

Besides the paths, the folder knows what is done to it: made with a new job, marked log
lines, the log's size and tail, the bucket's verdict taken from proc.json, a fresh OUTPUT
for a re-run, and the MB_* environment a bucket sees.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magickbox.jobs.scratch import count_files, new_job_dir, remove_tree, write_json_atomic

INPUT = "INPUT"
OUTPUT = "OUTPUT"
INFO_JSON = "info.json"
LOG = "processing.log"
PROC_JSON = "proc.json"
MEASURES_JSON = "measures.json"
SERIES_JSON = "series.json"
FACTS = ".mb-job.json"
RUN_PID = ".mb-run.pid"  # the running bucket's pid, to stop it after a crash of the box
PARTS = (OUTPUT, INPUT)  # the folders a user may list and download

LOG_MARK = "# magickbox"  # starts every line the box writes, to tell it from the bucket's
TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class RunFacts:
    """What a bucket is told about its job."""

    scratchdir: str
    called: str  # the bucket's AE title
    caller_aet: str
    caller_ip: str
    study_uid: str = ""
    jobname: str = ""


class JobFolder:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"JobFolder({str(self.path)!r})"

    # -- the layout ----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def input(self) -> Path:
        return self.path / INPUT

    @property
    def output(self) -> Path:
        return self.path / OUTPUT

    @property
    def info_json(self) -> Path:
        return self.path / INFO_JSON

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def proc_json(self) -> Path:
        return self.path / PROC_JSON

    @property
    def measures_json(self) -> Path:
        return self.path / MEASURES_JSON

    @property
    def series_json(self) -> Path:
        return self.path / SERIES_JSON

    def write_series(self, manifest: dict[str, Any]) -> None:
        """The series manifest a bucket reads from $MB_SERIES_JSON (replaced whole)."""
        write_json_atomic(self.series_json, manifest)

    @property
    def facts_file(self) -> Path:
        return self.path / FACTS

    @property
    def pid_file(self) -> Path:
        return self.path / RUN_PID

    def part(self, name: str) -> Path:
        """OUTPUT or INPUT by name (as the API and the page ask for them)."""
        if name not in PARTS:
            raise ValueError(f"not a part of a job folder: {name!r}")
        return self.path / name

    # -- making --------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        scratch: Path,
        input_dir: Path,
        facts: Mapping[str, Any],
        info: Mapping[str, str],
    ) -> JobFolder:
        """A new ``tmp.XXXXXXXX`` in ``scratch`` whose INPUT is ``input_dir`` (moved, not copied).

        INPUT comes last: a folder without it is half made, and a restart removes it.
        """
        folder = cls(new_job_dir(scratch))
        folder.output.mkdir()
        folder.log.touch()
        write_json_atomic(folder.facts_file, dict(facts))
        write_json_atomic(folder.info_json, dict(info))
        os.rename(input_dir, folder.input)
        return folder

    def read_facts(self) -> dict[str, Any]:
        """The facts written by :meth:`create` (OSError or ValueError when missing or broken)."""
        facts = json.loads(self.facts_file.read_text())
        if not isinstance(facts, dict):
            raise ValueError(f"{self.facts_file} is not an object")
        return facts

    def is_complete(self) -> bool:
        return self.input.is_dir()

    def count_input(self) -> int:
        return count_files(self.input)

    # -- the log -------------------------------------------------------------------
    def log_line(self, text: str) -> None:
        """A line of MagickBox's own in processing.log, marked so it is told from the bucket's."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.log.open("a") as fh:
            fh.write(f"{LOG_MARK} {stamp}: {text}\n")

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def has_log(self) -> bool:
        """A regular log file: a link planted in its place is never followed."""
        return self.log.is_file() and not self.log.is_symlink()

    def read_log(self, offset: int = 0) -> bytes:
        """The log from byte ``offset`` on (nothing when there is no regular log file)."""
        if not self.has_log():
            return b""
        with self.log.open("rb") as fh:
            fh.seek(offset)
            return fh.read()

    def log_tail(self, max_bytes: int = TAIL_BYTES) -> str | None:
        """About the last ``max_bytes`` of the log as text; None when there is no log."""
        try:
            with self.log.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - max_bytes))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return None

    # -- the bucket's verdict ------------------------------------------------------
    def take_success(self) -> str | None:
        """proc.json's ``success`` value, or None when there is no usable proc.json.

        A bucket may have put proc.json in OUTPUT instead: it is moved next to the log
        (where MB_PROC_JSON points) so that it is not routed as a result.
        """
        for path in (self.proc_json, self.output / PROC_JSON):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            first = data[0] if isinstance(data, list) and data else data
            if isinstance(first, dict) and "success" in first:
                if path != self.proc_json:
                    os.replace(path, self.proc_json)
                return str(first["success"])
        return None

    def read_measures(self, max_bytes: int) -> bytes | None:
        """The bytes of the bucket's measures.json ($MB_MEASURES first, then OUTPUT's), at
        most ``max_bytes`` + 1 of them; None when it wrote none. A link is never followed:
        the box must not serve a file the bucket points it to."""
        for path in (self.measures_json, self.output / MEASURES_JSON):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except FileNotFoundError:
                continue
            except OSError as exc:  # a link (ELOOP) or unreadable: say so
                raise OSError(f"{path.name} is not a regular file ({exc.strerror})") from None
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise OSError(f"{path.name} is not a regular file")
                return fh.read(max_bytes + 1)
        return None

    def read_verdict(self) -> dict[str, Any] | None:
        """proc.json's first object as ``{"success", "message"}`` (strings), read only;
        None when there is no usable proc.json (the original's couldNotReadProcJSON)."""
        for path in (self.proc_json, self.output / PROC_JSON):
            try:
                if path.is_symlink():
                    continue  # a bucket's link is never followed
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            first = data[0] if isinstance(data, list) and data else data
            if isinstance(first, dict):
                return {
                    "success": str(first.get("success", "")),
                    "message": str(first.get("message", "")),
                }
        return None

    def fresh_output(self, note: str) -> None:
        """An empty OUTPUT and no verdict, for a job that runs again; ``note`` says why."""
        remove_tree(self.output)
        self.output.mkdir(exist_ok=True)
        self.proc_json.unlink(missing_ok=True)
        self.measures_json.unlink(missing_ok=True)
        self.log_line(note)

    # -- what the bucket sees ------------------------------------------------------
    def environment(
        self,
        facts: RunFacts,
        memory: Path,
        home: Path,
        proc_json: Path | None = None,
        measures_json: Path | None = None,
    ) -> dict[str, str]:  # the one place the MB_* variables are named
        """The MB_* variables of a run; ``proc_json`` and ``measures_json`` where the
        verdict and the measures go if not into this folder."""
        env = {
            "MB_SCRATCHDIR": facts.scratchdir,
            "MB_JOB_DIR": str(self.path),
            "MB_AETITLE_CALLED": facts.called,
            "MB_AETITLE_CALLER": facts.caller_aet,
            "MB_CALLER_IP": facts.caller_ip,
            "MB_STUDY_UID": facts.study_uid,
            "MB_JOBNAME": facts.jobname,
            "MB_MEMORY": str(memory),
            "MB_PROC_JSON": str(proc_json or self.proc_json),
            "MB_MEASURES": str(measures_json or self.measures_json),
            "MB_HOME": str(home),
            "MB_PYTHON": sys.executable,  # the box's interpreter (pydicom, numpy at hand)
        }
        if self.series_json.is_file():  # the INPUT's series (a box that keeps series views)
            env["MB_SERIES_JSON"] = str(self.series_json)
        return env
