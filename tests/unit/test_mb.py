"""``mb`` without a box: its config files, the streamed multipart body, the spreading of
folders over machines, and what counts as a complete download."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import tracemalloc
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from magickbox.mb import config
from magickbox.mb.cli import build_parser, push_args
from magickbox.mb.client import zip_complete
from magickbox.mb.commands import MbError, selection, spread
from magickbox.mb.config import Machine
from magickbox.mb.multipart import FolderError, MultipartZip, scan_folder
from magickbox.mb.pull import MANIFEST_COLUMNS, write_manifest, zip_name
from magickbox.mb.select import Selection


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cfg"
    monkeypatch.setenv("MB_CONFIG_DIR", str(folder))
    return folder


# -- config ----------------------------------------------------------------------------
def test_config_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MB_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/x/conf")
    assert config.config_dir() == Path("/x/conf/magickbox")
    monkeypatch.setenv("MB_CONFIG_DIR", "/y")
    assert config.config_dir() == Path("/y")


def test_machines_are_stored_as_the_original_did(cfg: Path) -> None:
    assert config.load_machines() == []
    assert config.add_machine(Machine("10.0.0.5", 2813)) == "added"
    assert config.add_machine(Machine("10.0.0.5", 2813)) == "unchanged"  # no duplicates
    config.add_machine(Machine("10.0.0.5", 8080))
    config.add_machine(Machine("box2", 2813))
    text = (cfg / "machines.json").read_text()
    assert "\n  " in text  # indented: people read and edit it
    assert json.loads(text)[0] == {"Machine": "10.0.0.5", "Port": "2813"}
    assert config.remove_machines("10.0.0.5", 8080) == [Machine("10.0.0.5", 8080)]
    assert config.remove_machines("10.0.0.5", None) == [Machine("10.0.0.5", 2813)]
    assert config.load_machines() == [Machine("box2", 2813)]


def test_a_machine_may_name_a_token_file_and_a_ca(cfg: Path, tmp_path: Path) -> None:
    token = tmp_path / "box.token"
    token.write_text("mbt_secret\n")
    token.chmod(0o600)
    box = Machine("box", 2813, token_file=str(token), ca_file="/etc/ca.pem")
    assert box.url == "https://box:2813" and box.token() == "mbt_secret"
    assert config.add_machine(box) == "added"
    stored = json.loads((cfg / "machines.json").read_text())
    assert stored == [{"Machine": "box", "Port": "2813", "TokenFile": str(token),
                       "CaFile": "/etc/ca.pem"}]  # fmt: skip
    assert "mbt_secret" not in (cfg / "machines.json").read_text()
    [loaded] = config.load_machines()
    assert loaded.token() == "mbt_secret" and loaded.scheme == "https"
    assert box.as_json() == {"Machine": "box", "Port": "2813"}  # what jobs and lists show
    assert config.add_machine(box) == "unchanged"
    assert config.add_machine(Machine("box", 2813)) == "unchanged"  # bare: keeps its token
    assert config.load_machines()[0].token_file == str(token)
    assert config.add_machine(Machine("box", 2813, https=True)) == "updated"
    assert config.load_machines()[0].token_file == ""
    token.chmod(0o644)
    with pytest.raises(config.ConfigError, match="chmod 600"):
        box.token()
    assert Machine("plain").url == "http://plain:2813" and Machine("plain").token() == ""


def test_a_hand_written_machines_file_with_numbers_is_read(cfg: Path) -> None:
    cfg.mkdir()
    (cfg / "machines.json").write_text('[{"Machine": "a", "Port": 1234}, {"Machine": "b"}]')
    assert config.load_machines() == [Machine("a", 1234), Machine("b", 2813)]
    (cfg / "machines.json").write_text("{not json")
    with pytest.raises(config.ConfigError, match=r"machines\.json"):
        config.load_machines()


def test_settings_defaults_and_changes(cfg: Path) -> None:
    settings = config.load_settings()
    assert set(settings) == {"Sender", "Timeout"} and settings["Timeout"] > 0
    config.set_setting("Sender", "me")
    assert config.set_setting("Timeout", "2.5") == {"Sender": "me", "Timeout": 2.5}
    assert json.loads((cfg / "settings.json").read_text()) == {"Sender": "me", "Timeout": 2.5}
    with pytest.raises(config.ConfigError):
        config.set_setting("Timeout", "soon")
    with pytest.raises(config.ConfigError):
        config.parse_port("70000")


# -- the streamed upload -----------------------------------------------------------------
def _form_app() -> FastAPI:
    app = FastAPI()

    @app.post("/up")
    async def up(request: Request) -> dict:
        form = await request.form()
        upload = form["theFile"]
        data = await upload.read()  # type: ignore[union-attr]
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return {"fields": fields, "filename": upload.filename, "names": names}  # type: ignore[union-attr]

    return app


def test_multipart_body_is_what_starlette_reads(tmp_path: Path) -> None:
    folder = tmp_path / "subj01"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.dcm").write_bytes(b"x" * 5000)
    (folder / "2.dcm").write_bytes(b"y" * 10)
    fields = {"aetitle": "ProcX", "sender": "me", "arguments": 'a "b c"\r\nd', "jobname": "ü"}
    body = MultipartZip(fields, "theFile", 'subj"01.zip', scan_folder(folder))
    with TestClient(_form_app()) as client:
        reply = client.post("/up", content=iter(body), headers={"Content-Type": body.content_type})
    assert reply.status_code == 200, reply.text
    got = reply.json()
    assert got["fields"] == fields
    assert got["filename"] == "subj%2201.zip"
    assert got["names"] == ["subj01/2.dcm", "subj01/a/1.dcm"]


def test_progress_counts_every_byte_and_the_estimate_is_close(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    for i in range(20):
        (folder / f"{i}.dcm").write_bytes(bytes(1000 + i))
    scan = scan_folder(folder)
    seen: list[int] = []
    body = MultipartZip({"aetitle": "X"}, "theFile", "s.zip", scan, on_bytes=seen.append)
    data = b"".join(body)
    assert sum(seen) == len(data)
    zip_bytes = data[data.index(b"PK\x03\x04") : data.rindex(b"\r\n--")]
    assert zipfile.ZipFile(io.BytesIO(zip_bytes)).testzip() is None
    assert abs(scan.zip_size - len(zip_bytes)) <= 30 * scan.nfiles


def test_upload_body_memory_stays_constant(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(4):
        with open(folder / f"{i}.dcm", "wb") as fh:
            fh.truncate(32 << 20)  # sparse: 128 MiB to read, nothing to write
    body = MultipartZip({"aetitle": "X"}, "theFile", "big.zip", scan_folder(folder))
    total = 0
    tracemalloc.start()
    try:
        for chunk in body:
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 128 << 20
    assert peak < 8 << 20, f"peak traced memory {peak} bytes"


def test_folders_that_cannot_be_pushed(tmp_path: Path) -> None:
    with pytest.raises(FolderError, match="no such folder"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FolderError, match="not a folder"):
        scan_folder(tmp_path / "file")
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "link").symlink_to(tmp_path / "file")  # links are not followed
    with pytest.raises(FolderError, match="no files"):
        scan_folder(tmp_path / "empty")


# -- choosing, matching, naming -------------------------------------------------------------
def test_spread_goes_to_the_least_loaded_and_counts_its_own_jobs(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "x").write_text("x")
    scans = [scan_folder(tmp_path / "f")] * 5
    a, b, c = Machine("a", 1), Machine("b", 1), Machine("c", 1)
    plans = spread(scans, {a: 3, b: 0, c: 1})
    assert [p.machine.host for p in plans] == ["b", "b", "c", "b", "c"]


# A getScratch row as a box gives it, with mb's Machine and Port.
ROW = {
    "AETitleCalled": "ProcBucket",
    "AETitleCaller": "me",
    "CallerIP": "127.0.0.1",
    "received": "Wed Dec  2 16:35:25 UTC 2026",
    "scratchdir": "tmp.abc",
    "pid": "1.2.840.5",
    "lastChangedTime": "Wed, 02 Dec 2026 16:35:25 +0000",
    "processingTime": "12",
    "processingLogSize": 100,
    "status": "done",
    "jobname": "sub-001",
    "processingLast": 5,
    "Machine": "10.0.0.5",
    "Port": "2813",
}


def test_a_bare_regex_searches_the_fields_that_name_a_job() -> None:
    assert Selection("sub-00").matches(ROW)
    assert Selection("^ProcB").matches(ROW) and Selection("^done$").matches(ROW)
    assert Selection("840").matches(ROW)  # the study (pid)
    # Not through addresses, dates, times or sizes: `mb remove 1` once matched every job.
    for pattern in ("127", "2026", "^12$", "2813", "10.0.0.5", "Wed"):
        assert not Selection(pattern).matches(ROW), pattern
    assert Selection("in the log").matches(ROW, "it is in the log")
    nested = {**ROW, "measures": {"x": "hit"}}
    assert not Selection("hit").matches(nested)
    assert Selection("^P7$").matches({**ROW, "PatientID": "P7"})  # newer boxes' fields too
    with pytest.raises(MbError) as err:
        selection("[")
    assert err.value.code == 2


def test_filters_compare_whole_values_with_shell_patterns() -> None:
    def sel(**filters: list[str]) -> Selection:
        machine = filters.pop("machine", [])
        return Selection(None, filters, machine)

    assert sel(jobname=["sub-001"]).matches(ROW)
    assert not sel(jobname=["sub-00"]).matches(ROW)  # whole values, not substrings
    assert sel(jobname=["sub-00*"]).matches(ROW)
    assert not sel(jobname=["SUB-001"]).matches(ROW)  # case-sensitive
    assert sel(jobname=["sub-002", "sub-001"]).matches(ROW)  # any of a filter's patterns
    assert sel(bucket=["ProcBucket"], state=["done"]).matches(ROW)
    assert not sel(bucket=["ProcBucket"], state=["failed"]).matches(ROW)  # all filters
    assert sel(sender=["me"]).matches(ROW) and sel(sender=["127.0.0.*"]).matches(ROW)
    assert not sel(sender=["you"]).matches(ROW)
    assert sel(machine=["10.0.0.5"]).matches(ROW) and sel(machine=["*:2813"]).matches(ROW)
    assert not sel(machine=["10.0.0.5:1"]).matches(ROW)
    assert not sel(patient=["P7"]).matches(ROW)  # a row without patient fields
    assert sel(patient=["P7"]).matches({**ROW, "PatientID": "P7"})
    assert sel(patient=["Doe^*"]).matches({**ROW, "PatientName": "Doe^Jane"})
    assert not Selection(None, {"jobname": []}).narrows
    assert sel(state=["done"]).narrows and Selection("x").narrows


def test_zip_names_are_names_not_paths() -> None:
    job = {"pid": "1.2.3", "scratchdir": "tmp.x", "jobname": "sub-001"}
    assert zip_name(job, "output") == "sub-001_tmp.x.zip"
    assert zip_name(job, "output", names="pid") == "1.2.3_tmp.x.zip"  # the original's
    assert zip_name({**job, "jobname": "", "PatientID": "P 7"}, "output") == "P_7_tmp.x.zip"
    assert zip_name({**job, "jobname": ""}, "output") == "1.2.3_tmp.x.zip"
    assert zip_name({"pid": "1.2.3", "scratchdir": "tmp.x"}, "output") == "1.2.3_tmp.x.zip"
    bad = {"pid": "../a/b", "scratchdir": "tmp.x", "jobname": "../../etc"}
    assert zip_name(bad, "input", "pid") == ".._a_b_tmp.x_input.zip"
    assert zip_name(bad, "input") == ".._.._etc_tmp.x_input.zip"


def test_the_manifest_is_a_csv_with_the_columns_first(tmp_path: Path) -> None:
    import csv

    rows = [
        {"jobname": "sub-1", "study": "1.2", "state": "done", "reason": "", "file": "a.zip",
         "scratchdir": "tmp.a", "Machine": "h", "Port": "1", "status": "downloaded", "bytes": 9},
        {"jobname": "sub,2", "study": "1.3", "state": "failed", "reason": 'exit 3: "no"',
         "file": "", "scratchdir": "tmp.b", "Machine": "h", "Port": "1", "status": "job-failed"},
    ]  # fmt: skip
    path = tmp_path / "out" / "manifest.csv"
    write_manifest(path, rows)
    with path.open(newline="") as fh:
        read = list(csv.DictReader(fh))
    assert tuple(read[0]) == MANIFEST_COLUMNS
    assert MANIFEST_COLUMNS[:5] == ("jobname", "study", "state", "reason", "file")
    assert [r["jobname"] for r in read] == ["sub-1", "sub,2"]
    assert read[1]["reason"] == 'exit 3: "no"'
    assert [p.name for p in path.parent.iterdir()] == ["manifest.csv"]  # no temporary left


def test_the_batch_bar_counts_folders_and_a_transfer_bar_bytes() -> None:
    from rich.console import Console
    from rich.progress import Progress

    from magickbox.mb.progress import Bars, _columns

    out = io.StringIO()
    console = Console(file=out, width=150, force_terminal=True, color_system=None)
    with Progress(*_columns(), console=console, auto_refresh=False) as progress:
        ui = Bars(progress)
        ui.batch("push ProcX", "folders", 2000)
        ui.step(37)
        moved = ui.bar("sub-001 → box:1", 4 << 20)
        moved(2 << 20)
        progress.refresh()
        assert "37/2000 folders" in out.getvalue()
        assert "2.1/4.2 MB" in out.getvalue()
        ui.finish("sub-001 → box:1")  # a finished transfer leaves the display
        assert [t.description for t in progress.tasks] == ["push ProcX"]


def test_bars_are_silent_without_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from magickbox.mb.progress import bars

    with bars(False) as ui:
        ui.batch("pull", "jobs", 3)
        ui.step()
        ui.bar("x", 10)(5)
        ui.finish("x")
    assert capsys.readouterr() == ("", "")


def test_zip_complete_rejects_a_cut_file(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x", b"1" * 1000)
    assert zip_complete(path)
    path.write_bytes(path.read_bytes()[:-10])
    assert not zip_complete(path)
    assert not zip_complete(tmp_path / "missing.zip")


def test_push_accepts_the_originals_trailing_arguments(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "e").mkdir()
    parser = build_parser()
    args = parser.parse_args(["p", "ProcX", str(tmp_path / "d"), "-v --fast"])
    assert push_args(args) == ([str(tmp_path / "d")], "-v --fast")
    args = parser.parse_args(["push", "ProcX", str(tmp_path / "d"), str(tmp_path / "e")])
    assert push_args(args) == ([str(tmp_path / "d"), str(tmp_path / "e")], "")
    args = parser.parse_args(["push", "ProcX", str(tmp_path / "d"), "--arguments=-x"])
    assert push_args(args) == ([str(tmp_path / "d")], "-x")


@pytest.mark.parametrize(
    ("alias", "command"),
    [("p", "push"), ("l", "list"), ("g", "log"), ("pi", "pull-input"), ("r", "remove"),
     ("q", "queryMachines"), ("w", "setSender"), ("c", "computeModules"), ("a", "activeMachines")],
)  # fmt: skip
def test_every_original_alias_is_accepted(alias: str, command: str) -> None:
    from magickbox.mb.cli import ALIASES

    assert ALIASES[alias] == command
    extra = {"p": ["X", "d"]}.get(alias, [])
    assert build_parser().parse_args([alias, *extra]).command == alias


def _zip_server(whole: bytes) -> ThreadingHTTPServer:
    """Serves ``whole`` for folder=ok, a cut copy of it for folder=cut, and breaks the
    connection halfway for folder=drop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            folder = parse_qs(urlparse(self.path).query)["folder"][0]
            body = {"ok": whole, "cut": whole[:-40], "drop": whole[: len(whole) // 2]}[folder]
            self.send_response(200)
            length = len(whole) if folder == "drop" else len(body)  # drop: promise more
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_broken_download_leaves_no_file(tmp_path: Path) -> None:
    from magickbox.mb.client import Client, MachineError

    whole = io.BytesIO()
    with zipfile.ZipFile(whole, "w") as zf:
        zf.writestr("tmp.x/OUTPUT/a", b"a" * 50_000)
    server = _zip_server(whole.getvalue())
    box = Machine("127.0.0.1", server.server_address[1])
    try:
        with Client(5) as client:
            with pytest.raises(MachineError, match="incomplete"):
                client.download(box, "cut", tmp_path / "cut.zip")  # the directory is missing
            with pytest.raises(MachineError, match="broke off"):
                client.download(box, "drop", tmp_path / "drop.zip")  # the connection died
            assert list(tmp_path.iterdir()) == []  # no final name, no temporary file
            assert client.download(box, "ok", tmp_path / "ok.zip") == len(whole.getvalue())
    finally:
        server.shutdown()
    assert [p.name for p in tmp_path.iterdir()] == ["ok.zip"]
    assert zip_complete(tmp_path / "ok.zip")


# -- pull's bookkeeping, over a fake box ------------------------------------------------------
class FakeBox:
    """Answers as a box would: getScratch rows, failure reasons, zips; ``interrupt_at`` makes
    that download raise KeyboardInterrupt as Ctrl-C would."""

    def __init__(self, rows: list[dict], interrupt_at: str = "") -> None:
        self.rows, self.interrupt_at = rows, interrupt_at
        self.pulled: list[str] = []

    def ask_all(self, machines, ask):  # type: ignore[no-untyped-def]
        from magickbox.mb.client import Answers

        return Answers([(m, ask(m)) for m in machines], [])

    def jobs(self, machine: Machine) -> list[dict]:
        return [{**r, **machine.as_json()} for r in self.rows]

    def failure_reasons(self, machine: Machine) -> dict[str, str]:
        return {
            r["scratchdir"]: "work.sh exited with 3" for r in self.rows if r["status"] == "failed"
        }

    def download(self, machine, scratchdir, dest, part, on_bytes):  # type: ignore[no-untyped-def]
        if scratchdir == self.interrupt_at:
            raise KeyboardInterrupt
        with zipfile.ZipFile(dest, "w") as zf:
            zf.writestr(f"{scratchdir}/OUTPUT/x", b"x")
        self.pulled.append(scratchdir)
        return dest.stat().st_size


def _job(name: str, state: str) -> dict:
    finished = state in ("done", "failed")
    return {"scratchdir": f"tmp.{name}", "jobname": name, "pid": "1.2", "status": state,
            "processingTime": "3" if finished else "0", "AETitleCalled": "B"}  # fmt: skip


def _pull(box: FakeBox, tmp_path: Path, **opts: object) -> tuple[int, list[dict]]:
    from magickbox.mb.commands import Context
    from magickbox.mb.pull import PullOptions, cmd_pull

    ctx = Context({}, [Machine("h", 1)], box, progress=False)  # type: ignore[arg-type]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cmd_pull(ctx, Selection(), PullOptions(folder=tmp_path, **opts))  # type: ignore[arg-type]
    return code, json.loads(out.getvalue())


def test_pull_gives_up_at_the_timeout_and_lists_every_job(tmp_path: Path) -> None:
    box = FakeBox([_job("a", "done"), _job("b", "failed"), _job("c", "running")])
    code, rows = _pull(box, tmp_path, wait=True, timeout=0.05, poll=0.01)
    assert code == 6
    assert [(r["jobname"], r["status"], r["reason"]) for r in rows] == [
        ("a", "downloaded", ""),
        ("b", "job-failed", "work.sh exited with 3"),
        ("c", "not-finished", ""),
    ]
    assert box.pulled == ["tmp.a"]  # a failed job's OUTPUT is not pulled
    manifest = (tmp_path / "manifest.csv").read_text().splitlines()
    assert manifest[0].startswith("jobname,study,state,reason,file") and len(manifest) == 4
    code, rows = _pull(box, tmp_path, failed=True)
    assert code == 0 and box.pulled == ["tmp.a", "tmp.b"]
    assert [r["status"] for r in rows] == ["skipped", "downloaded", "not-finished"]


def test_ctrl_c_keeps_what_was_pulled(tmp_path: Path) -> None:
    box = FakeBox([_job("a", "done"), _job("b", "done"), _job("c", "done")], "tmp.b")
    code, rows = _pull(box, tmp_path)
    assert code == 130
    assert [(r["jobname"], r["status"]) for r in rows] == [
        ("a", "downloaded"), ("b", "interrupted"), ("c", "interrupted"),
    ]  # fmt: skip
    assert len((tmp_path / "manifest.csv").read_text().splitlines()) == 4


def test_a_big_removal_without_a_terminal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from magickbox.mb.commands import confirm_removal

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # not a terminal: the y is not read
    with pytest.raises(MbError, match="pass -y") as err:
        confirm_removal([{**ROW, "scratchdir": f"tmp.{i}"} for i in range(5)])
    assert err.value.code == 2


class StallingBox(FakeBox):
    """A box that takes the first folder and, during the second upload, sees the user press
    Ctrl-C (SIGINT reaches mb's main thread while a worker uploads)."""

    def __init__(self) -> None:
        super().__init__([])
        self.released = threading.Event()

    def buckets(self, machine: Machine) -> list[dict]:
        return [{"AETitle": "X"}]

    def load(self, machine: Machine) -> int:
        return 0

    def upload(self, machine, scan, fields, on_bytes):  # type: ignore[no-untyped-def]
        import _thread

        if fields["jobname"] == "b":
            _thread.interrupt_main()  # as the terminal's ^C would
            self.released.wait(10)  # the upload hangs until the test has its answer
            return {}
        return {"scratchdir": "tmp.a", "pid": "1.2", "files": 1}


def test_ctrl_c_during_a_push_prints_the_folders_already_pushed(tmp_path: Path) -> None:
    from magickbox.mb.commands import Context, cmd_push

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.dcm").write_bytes(b"x")
    box = StallingBox()
    ctx = Context({"Sender": "me"}, [Machine("h", 1)], box, progress=False)  # type: ignore[arg-type]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = cmd_push(ctx, "X", [str(tmp_path / "a"), str(tmp_path / "b")], "", "", False)
    finally:
        box.released.set()
    assert code == 130
    rows = json.loads(out.getvalue())
    assert [(r["jobname"], r.get("scratchdir"), r.get("error")) for r in rows] == [
        ("a", "tmp.a", None),
        ("b", None, "interrupted"),
    ]
