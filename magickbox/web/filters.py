"""Which jobs: the jobs list's filter, one model for the query string of ``GET
/api/v1/jobs`` and ``GET /api/v1/jobs.zip`` and for the ``filter`` of a bulk action."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from magickbox.jobs.db import State
from magickbox.jobs.store import SORTS, JobFilter

SortKey = Literal[
    "received_at", "state", "scratchdir", "bucket", "caller_aet", "caller_ip", "jobname",
    "patient_id", "patient_name", "accession_number", "study_date", "study_uid", "log_size",
    "started_at", "finished_at", "processing_seconds",
]  # fmt: skip
# One list: what the API accepts is what the store can sort by.
assert set(get_args(SortKey)) == set(SORTS), "SortKey and jobs.store.SORTS differ"


class JobQuery(BaseModel):
    """Jobs whose fields are these (each one given narrows the match). In a query string
    other parameters are ignored, as they always were."""

    bucket: str | None = None
    caller_aet: str | None = None
    caller_ip: str | None = None
    study_uid: str | None = None
    state: State | None = None
    since: Annotated[float | None, Field(description="epoch seconds")] = None
    until: Annotated[float | None, Field(description="received before, epoch seconds")] = None
    q: Annotated[str | None, Field(description="substring of any text field")] = None
    initial: Annotated[
        str | None, Field(max_length=1, description="first letter of the sender's AE title")
    ] = None
    patient_id: Annotated[str | None, Field(description="PatientID, exactly")] = None
    accession_number: Annotated[str | None, Field(description="AccessionNumber")] = None
    study_date: Annotated[
        str | None,
        Field(pattern=r"^\d{8}(-\d{8})?$", description="YYYYMMDD or YYYYMMDD-YYYYMMDD"),
    ] = None
    modality: Annotated[
        str | None, Field(pattern=r"^[A-Za-z0-9]{1,16}$", description="one of the job's")
    ] = None

    def job_filter(self) -> JobFilter:
        values = self.model_dump(include=set(JobQuery.model_fields))  # a subclass has more
        values["state"] = self.state.value if self.state else None
        values["q"] = self.q or None
        values["initial"] = self.initial or None
        return JobFilter(**values)


class FilterBody(JobQuery):
    """The filter of a bulk action: a misspelt field is refused, never read as "all jobs"."""

    model_config = ConfigDict(extra="forbid")


class ListQuery(JobQuery):
    """A page of the jobs list, sorted by a column."""

    sort: Annotated[
        SortKey | None, Field(description="a field of the job to sort by; none: newest first")
    ] = None
    order: Literal["asc", "desc"] = "desc"
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100
    offset: Annotated[int, Field(ge=0, le=2**62, description="rows to skip")] = 0
