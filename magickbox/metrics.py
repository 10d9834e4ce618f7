"""Prometheus metrics of one box (``GET /metrics``), fed by the EventBus.

Each Box has its own :class:`CollectorRegistry` (tests run many boxes in one process, and
the process-wide default registry would mix them). What happens (images received,
associations refused, jobs started and ended, sends, bytes scrubbed, parts restarted) is
counted from the bus's events as they are published; what *is* (jobs by state, open
associations, free disk) is read when Prometheus scrapes, so it can never drift.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from magickbox.events import (
    AssociationRejected,
    EventBus,
    ImageReceived,
    JobFinished,
    JobStarted,
    PartRestarted,
    Scrubbed,
    SendEnded,
)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the classic text format every Prometheus reads
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400, float("inf"))


class Source(Protocol):
    """What the scrape-time gauges read: the Box answers these."""

    def job_counts(self) -> dict[str, dict[str, int]]: ...  # {bucket: {state: jobs}}
    def open_associations(self) -> int: ...
    def disk_space(self) -> tuple[int, int]: ...  # (free, total) bytes of the scratch disk


class Metrics:
    def __init__(self, events: EventBus, source: Source) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        aes = ["calling_aet", "called_aet"]
        self.images = Counter(
            "magickbox_received_images",
            "C-STOREs accepted (files kept), by calling and called AE title",
            aes,
            registry=registry,
        )
        self.bytes = Counter(
            "magickbox_received_bytes",
            "Data set bytes of the accepted C-STOREs, by calling and called AE title",
            aes,
            registry=registry,
        )
        self.rejected = Counter(
            "magickbox_associations_rejected",
            "Associations refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.run_time = Histogram(
            "magickbox_job_run_seconds",
            "Seconds from a job's start to its end, per bucket",
            ["bucket"],
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "magickbox_job_queue_wait_seconds",
            "Seconds a job waited in the queue before it started, per bucket",
            ["bucket"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.finished = Counter(
            "magickbox_jobs_finished",
            "Jobs that ended, per bucket and state (done, failed)",
            ["bucket", "state"],
            registry=registry,
        )
        self.sends = Counter(
            "magickbox_sends",
            "Tries of routing sends that ended, by "
            "destination and outcome (done, retrying, failed)",
            ["destination", "outcome"],
            registry=registry,
        )
        self.scrubbed = Counter(
            "magickbox_scrubbed_bytes",
            "Bytes freed by removing old jobs, studies and stale files",
            registry=registry,
        )
        self.restarts = Counter("magickbox_part_restarts", "Parts the heartbeat found down or "
                                "hung and restarted", ["part"], registry=registry)  # fmt: skip
        registry.register(_Snapshot(source))
        self._subscribe(events)

    def _subscribe(self, events: EventBus) -> None:
        events.subscribe(ImageReceived, self._image)
        events.subscribe(AssociationRejected, lambda e: self.rejected.labels(e.reason).inc())
        events.subscribe(JobStarted, lambda e: self.queue_wait.labels(e.bucket).observe(e.waited))
        events.subscribe(JobFinished, self._job_finished)
        events.subscribe(SendEnded, lambda e: self.sends.labels(e.destination, e.outcome).inc())
        events.subscribe(Scrubbed, lambda e: self.count_scrubbed(e.nbytes))
        events.subscribe(PartRestarted, lambda e: self.restarts.labels(e.part).inc())

    def _image(self, event: ImageReceived) -> None:
        self.images.labels(event.caller_aet, event.called_aet).inc(event.images)
        self.bytes.labels(event.caller_aet, event.called_aet).inc(event.nbytes)

    def _job_finished(self, event: JobFinished) -> None:
        self.finished.labels(event.bucket, event.state).inc()
        if event.run_seconds is not None:
            self.run_time.labels(event.bucket).observe(event.run_seconds)

    def count_scrubbed(self, nbytes: int) -> None:
        """Count ``nbytes`` freed by a scrub or sweep (or publish a ``Scrubbed`` event)."""
        if nbytes > 0:
            self.scrubbed.inc(nbytes)

    def text(self) -> bytes:
        """The exposition in Prometheus' text format."""
        return generate_latest(self.registry)


class _Snapshot(Collector):
    """Gauges read at scrape time from the box itself (the database, the listener, the disk)."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; and no database read then

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "magickbox_jobs", "Jobs now, per bucket and state", labels=["bucket", "state"]
        )
        for bucket, states in sorted(self.source.job_counts().items()):
            for state, n in sorted(states.items()):
                jobs.add_metric([bucket, state], n)
        yield jobs
        yield GaugeMetricFamily(
            "magickbox_associations_open",
            "DICOM associations open now",
            value=self.source.open_associations(),
        )
        free, total = self.source.disk_space()
        yield GaugeMetricFamily(
            "magickbox_disk_free_bytes", "Free bytes of the scratch filesystem", value=free
        )
        yield GaugeMetricFamily(
            "magickbox_disk_total_bytes", "Size of the scratch filesystem", value=total
        )
