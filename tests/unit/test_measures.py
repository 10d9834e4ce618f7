"""measures.json: what a bucket may write, what the box refuses (by place), and the table
of a bucket's jobs built from the stored measures."""

from __future__ import annotations

from pathlib import Path

import pytest

from magickbox.errors import BadMeasures
from magickbox.jobfolder import JobFolder
from magickbox.jobs import measures
from magickbox.jobs.db import Job, open_database
from magickbox.jobs.measures import MeasuresStore, parse, table


def test_a_flat_object_is_one_row() -> None:
    got = parse(b'{"volume": 12.5, "count": 3, "side": "left", "note": null}')
    assert got.data == {"volume": 12.5, "count": 3, "side": "left", "note": None}
    assert got.rows == [got.data]


def test_a_list_of_objects_is_one_row_each() -> None:
    got = parse(b'[{"roi": "a", "v": 1}, {"roi": "b", "v": 2}]')
    assert got.rows == [{"roi": "a", "v": 1}, {"roi": "b", "v": 2}]
    assert got.data == got.rows


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"{not json", "is not JSON"),
        (b'"text"', "must be an object of measures or a list of them, not a text"),
        (b"[1, 2]", "measures.json[0] must be an object, not a number"),
        (b'{"a": {"b": 1}}', 'measures.json["a"] is an object; a measure is a number'),
        (b'[{"a": 1}, {"b": [1]}]', 'measures.json[1]["b"] is a list'),
        (b'{"ok": true}', 'measures.json["ok"] is true/false'),
        (b'{"v": NaN}', "is not JSON"),
        (b'{"v": Infinity}', "is not JSON"),
        (b'{"": 1}', "a name must be printable text"),
        (b'{"a\\nb": 1}', "a name must be printable text"),
        (b'{"v": 1e400}', 'measures.json["v"] is not a finite number'),
        (b'{"v": 9223372036854775808}', "a whole number beyond 64 bits"),
        (b"[" * 100_000 + b"]" * 100_000, "nested far too deep"),
    ],
)
def test_a_bad_file_is_named_by_place(raw: bytes, says: str) -> None:
    with pytest.raises(BadMeasures) as err:
        parse(raw)
    assert says in str(err.value)


def test_sizes_are_capped() -> None:
    with pytest.raises(BadMeasures, match="larger than"):
        parse(b" " * (measures.MAX_BYTES + 1))
    rows = b"[" + b",".join([b"{}"] * (measures.MAX_ROWS + 1)) + b"]"
    with pytest.raises(BadMeasures, match="rows; at most"):
        parse(rows)
    with pytest.raises(BadMeasures, match="longer than"):
        parse(b'{"t": "' + b"x" * (measures.MAX_TEXT_CHARS + 1) + b'"}')


def job(name: str, jobname: str = "", state: str = "done") -> Job:
    return Job(scratchdir=name, jobname=jobname or name, state=state, bucket="B")


def test_the_table_has_every_measure_in_first_seen_order() -> None:
    got = table(
        [
            (job("tmp.1", "s1"), {"b": 1, "a": 2}),
            (job("tmp.2", "s2", "failed"), None),
            (job("tmp.3", "s3"), {"c": "x", "a": 5}),
        ]
    )
    assert got.columns == ["jobname", "scratchdir", "state", "b", "a", "c"]
    assert got.rows == [
        {"jobname": "s1", "scratchdir": "tmp.1", "state": "done", "b": 1, "a": 2},
        {"jobname": "s2", "scratchdir": "tmp.2", "state": "failed"},
        {"jobname": "s3", "scratchdir": "tmp.3", "state": "done", "c": "x", "a": 5},
    ]


def test_list_measures_are_numbered_and_names_of_job_columns_are_kept_apart() -> None:
    got = table(
        [
            (job("tmp.1"), [{"roi": "L", "state": "ok"}, {"roi": "R", "state": "ok"}]),
            (job("tmp.2"), {"roi": "all"}),
        ]
    )
    assert got.columns == ["jobname", "scratchdir", "state", "row", "roi", "measures.state"]
    assert [(r["scratchdir"], r["row"], r["roi"]) for r in got.rows] == [
        ("tmp.1", 0, "L"),
        ("tmp.1", 1, "R"),
        ("tmp.2", 0, "all"),
    ]
    assert got.rows[0]["state"] == "done" and got.rows[0]["measures.state"] == "ok"


@pytest.fixture
def store(tmp_path: Path) -> MeasuresStore:
    return MeasuresStore(open_database(f"sqlite:///{tmp_path / 'db.sqlite'}"))


@pytest.fixture
def folder(tmp_path: Path) -> JobFolder:
    path = tmp_path / "tmp.abc"
    (path / "OUTPUT").mkdir(parents=True)
    return JobFolder(path)


def test_take_keeps_a_good_file_and_says_so(store: MeasuresStore, folder: JobFolder) -> None:
    assert store.take("tmp.abc", folder) is None  # the bucket wrote none
    (folder.output / "measures.json").write_text('[{"v": 1, "w": 2}, {"v": 3}]')
    assert store.take("tmp.abc", folder) == "measures.json: kept 2 measures in 2 rows"
    assert store.get("tmp.abc") == [{"v": 1, "w": 2}, {"v": 3}]


def test_take_never_raises_for_a_bad_file(store: MeasuresStore, folder: JobFolder) -> None:
    folder.measures_json.write_text('{"v": [1]}')
    note = store.take("tmp.abc", folder)
    assert note == 'measures.json["v"] is a list; a measure is a number, a text or null; ' \
        "no measures kept"  # fmt: skip
    assert store.get("tmp.abc") is None
    with pytest.raises(BadMeasures):
        store.reread("tmp.abc", folder)


# -- the store keeps measures and timing with the job's end -------------------------------


def test_a_jobs_end_keeps_its_measures_and_time_and_a_rerun_or_delete_drops_them(
    tmp_path: Path,
) -> None:
    from magickbox.config import Settings
    from magickbox.jobs.store import JobStore, NewJob

    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'j.db'}")
    for folder in (settings.scratch, settings.archive):
        folder.mkdir(parents=True)
    store = JobStore(settings, open_database(settings.db_url))
    src = tmp_path / "send"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"x")
    made = store.create_job(src, NewJob(bucket="B", caller_aet="S", caller_ip="1.2.3.4"))
    claimed = store.claim_next("B")
    assert claimed is not None and claimed.started_at is not None
    folder = JobFolder(store.job_dir(made))
    folder.measures_json.write_text('{"v": 1.5}')
    end = claimed.started_at + 12.0
    store.finish(made.scratchdir, {"state": "done", "finished_at": end, "log_size": 0})
    assert store.measures.get(made.scratchdir) == {"v": 1.5}
    assert "measures.json: kept 1 measures in 1 rows" in folder.log.read_text()
    figures = store.timing.of("B")
    assert figures is not None and (figures.n, figures.mean) == (1, pytest.approx(12.0))
    job = store.get(made.scratchdir)
    assert job is not None and job.log_size == folder.log_size()  # the note is counted

    assert store.requeue(made.scratchdir, "again")  # a re-run: the old measures go
    assert store.measures.get(made.scratchdir) is None and not folder.measures_json.exists()
    store.claim_next("B")
    store.finish(made.scratchdir, {"state": "failed", "finished_at": end + 50, "log_size": 0})
    assert store.timing.of("B").n == 1  # type: ignore[union-attr]  # failed runs do not count
    store.measures.put(made.scratchdir, measures.parse(b'{"w": 2}'))
    store.delete(made.scratchdir)
    assert store.measures.get(made.scratchdir) is None
    store.sessions.kw["bind"].dispose()
