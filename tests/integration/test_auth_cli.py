"""``magickbox users`` and ``magickbox tokens`` on a real home, run as the CLI runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from magickbox.cli import main


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path,
        *args: str, stdin: str = "") -> tuple[int, str, str]:  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main([*args[:2], "--home", str(home), *args[2:]])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_users(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    assert run(capsys, monkeypatch, home, "users", "add", "ann", "--role", "operator",
               "--password-stdin", stdin="a long password\n")[0] == 0  # fmt: skip
    code, out, _ = run(capsys, monkeypatch, home, "users", "list")
    assert code == 0 and out.split() == ["ann", "operator"]
    code, _, err = run(capsys, monkeypatch, home, "users", "add", "ann", "--password-stdin",
                       stdin="another password\n")  # fmt: skip
    assert code == 3 and "exists" in err
    code, _, err = run(capsys, monkeypatch, home, "users", "passwd", "ann", "--password-stdin",
                       stdin="short\n")  # fmt: skip
    assert code == 2 and "at least 8" in err
    assert run(capsys, monkeypatch, home, "users", "passwd", "ann", "--password-stdin",
               stdin="a new long password\n")[0] == 0  # fmt: skip
    assert run(capsys, monkeypatch, home, "users", "remove", "ann")[0] == 0
    code, _, err = run(capsys, monkeypatch, home, "users", "remove", "ann")
    assert code == 4 and "no user" in err


def test_tokens(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    code, out, err = run(capsys, monkeypatch, home, "tokens", "create", "backup", "--role",
                         "viewer", "--expires-days", "30")  # fmt: skip
    secret = out.strip()
    assert code == 0 and secret.startswith("mbt_") and "not shown again" in err
    code, out, _ = run(capsys, monkeypatch, home, "tokens", "list")
    listed = json.loads(out)
    assert listed["name"] == "backup" and listed["status"] == "active"
    assert secret not in out  # never shown again
    assert listed["expires_at"] > listed["created_at"] + 29 * 86400
    assert run(capsys, monkeypatch, home, "tokens", "revoke", "backup")[0] == 0
    code, out, _ = run(capsys, monkeypatch, home, "tokens", "list")
    assert json.loads(out)["status"] == "revoked"
    assert run(capsys, monkeypatch, home, "tokens", "revoke", "backup")[0] == 4
    code, _, err = run(capsys, monkeypatch, home, "tokens", "create", "x", "--expires-days", "0")
    assert code == 2


def test_each_command_has_help(capsys) -> None:  # type: ignore[no-untyped-def]
    for group, cmd in [("users", c) for c in ("add", "list", "remove", "passwd")] + [
        ("tokens", c) for c in ("create", "list", "revoke")
    ]:
        with pytest.raises(SystemExit) as done:
            main([group, cmd, "--help"])
        assert done.value.code == 0
        assert "--home" in capsys.readouterr().out


def test_the_commands_changes_are_in_the_audit_trail(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import getpass

    from magickbox.auth.audit import AuditFilter, AuditLog
    from magickbox.config import load_settings
    from magickbox.jobs.db import open_database

    home = tmp_path / "home"
    for args, stdin in ((("users", "add", "ann", "--password-stdin"), "a long password\n"),
                        (("users", "passwd", "ann", "--password-stdin"), "another password\n"),
                        (("tokens", "create", "ci"), ""), (("tokens", "revoke", "ci"), ""),
                        (("users", "remove", "ann"), "")):  # fmt: skip
        assert run(capsys, monkeypatch, home, *args, stdin=stdin)[0] == 0, args
    db = open_database(load_settings(home).db_url)
    try:
        events = AuditLog(db).page(AuditFilter(actor=f"cli:{getpass.getuser()}"), 100, 0)
    finally:
        db.kw["bind"].dispose()
    trail = [(e["action"], e["target"]) for e in reversed(events["events"])]
    assert [a for a, _ in trail] == ["user_add", "user_password", "token_create",
                                     "token_revoke", "user_remove"]  # fmt: skip
    assert "a long password" not in str(events) and "another password" not in str(events)
