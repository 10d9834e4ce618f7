"""The auth package on a real SQLite database: users, tokens, sessions, throttling, networks."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from magickbox.auth import hashing
from magickbox.auth.hosts import host_of
from magickbox.auth.roles import Role
from magickbox.auth.service import Authority, parse_trusted
from magickbox.auth.sessions import Sessions
from magickbox.auth.store import PASSWORD_FILE, AuthStore
from magickbox.auth.throttle import LoginThrottle
from magickbox.config import Settings
from magickbox.errors import Conflict, Invalid, NotFound, TooManyRequests, Unauthorized
from magickbox.jobs.db import open_database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sessionmaker]:
    sessions = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield sessions
    sessions.kw["bind"].dispose()


def test_roles_are_ordered_and_parsed() -> None:
    assert Role.viewer < Role.operator < Role.admin
    assert Role.parse(" Operator ") is Role.operator
    for bad in ("public", "root", ""):
        with pytest.raises(Invalid):
            Role.parse(bad)


# The argon2id parameters each password_hash_cost writes into a new hash: "standard" is
# argon2-cffi's default (RFC 9106, low memory); the tests below, whose point is not the hash,
# use "test" (what tests/conftest.py sets for every box the suite starts).
PARAMETERS = {"standard": "$m=65536,t=3,p=4$", "test": "$m=8,t=1,p=1$"}
CHEAP = "test"


@pytest.mark.parametrize("cost", sorted(PARAMETERS))
def test_passwords_are_argon2_and_checked(db: sessionmaker, cost: str) -> None:
    store = AuthStore(db, cost)
    store.add_user("ann", Role.operator, "correct horse")
    assert store.login("ann", "correct horse") is Role.operator
    assert store.login("ann", "wrong horse!") is None
    assert store.login("nobody", "correct horse") is None
    with db() as s:
        from magickbox.auth.models import User

        stored = s.query(User).one().password_hash
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert PARAMETERS[cost] in stored
    # A hash keeps its own cost: a box with the other setting checks it all the same.
    other = AuthStore(db, next(c for c in PARAMETERS if c != cost))
    assert other.login("ann", "correct horse") is Role.operator
    assert other.login("ann", "wrong horse!") is None
    store.set_password("ann", "battery staple")
    assert store.login("ann", "correct horse") is None
    assert store.login("ann", "battery staple") is Role.operator


def test_the_default_cost_is_standard() -> None:
    assert Settings().password_hash_cost == "standard"
    assert AuthStore(sessionmaker()).hash_cost == "standard"


def test_user_rules(db: sessionmaker) -> None:
    store = AuthStore(db, CHEAP)
    with pytest.raises(Invalid):
        store.add_user("bob", Role.viewer, "short")
    with pytest.raises(Invalid):
        store.add_user("../bob", Role.viewer, "long enough")
    store.add_user("root", Role.admin, "long enough")
    with pytest.raises(Conflict):
        store.add_user("root", Role.viewer, "long enough")
    with pytest.raises(Conflict):  # never the last admin
        store.remove_user("root")
    store.add_user("second", Role.admin, "long enough")
    store.remove_user("root")
    assert [u["name"] for u in store.users()] == ["second"]
    with pytest.raises(NotFound):
        store.remove_user("root")


def test_tokens_are_shown_once_stored_hashed_and_revocable(db: sessionmaker) -> None:
    store = AuthStore(db, CHEAP)
    secret, info = store.create_token("backup", Role.viewer)
    assert secret.startswith(hashing.TOKEN_PREFIX) and len(secret) > 40
    with db() as s:
        from magickbox.auth.models import ApiToken

        assert s.query(ApiToken).one().digest == hashing.token_digest(secret)
    assert store.token_role(secret) == ("backup", Role.viewer)
    assert store.token_role(secret + "x") is None
    assert store.tokens()[0].status == "active"
    store.revoke_token("backup")
    assert store.token_role(secret) is None
    assert store.tokens()[0].status == "revoked"
    with pytest.raises(NotFound):
        store.revoke_token(str(info.id))


def test_expired_tokens_do_not_work(db: sessionmaker) -> None:
    store = AuthStore(db, CHEAP)
    old, _ = store.create_token("old", Role.admin, expires_at=time.time() - 1)
    new, _ = store.create_token("new", Role.admin, expires_at=time.time() + 3600)
    assert store.token_role(old) is None
    assert store.token_role(new) == ("new", Role.admin)
    assert [t.status for t in store.tokens()] == ["expired", "active"]


def test_a_new_home_gets_one_admin_with_a_private_password_file(
    db: sessionmaker, tmp_path: Path
) -> None:
    store = AuthStore(db, CHEAP)
    password = store.ensure_first_admin(tmp_path)
    assert password and store.login("admin", password) is Role.admin
    path = tmp_path / PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().split() == ["admin", password]
    assert store.ensure_first_admin(tmp_path) is None  # once only


def test_sessions_end_when_idle_and_on_logout(db: sessionmaker) -> None:
    sessions = Sessions(db, idle_seconds=0.5)
    sid, session = sessions.create("ann", Role.viewer)
    assert sessions.get(sid) == session and session.csrf and session.csrf != sid
    time.sleep(0.6)
    assert sessions.get(sid) is None
    other = Sessions(db, 60)
    sid, _ = other.create("ann", Role.viewer)
    kept, _ = other.create("bob", Role.viewer)
    other.end(sid)
    assert other.get(sid) is None and other.get(kept) is not None
    assert other.get("") is None and other.get("made up") is None
    other.end_user("bob")
    assert other.get(kept) is None


def test_sessions_outlive_the_process_and_keep_no_session_id(db: sessionmaker) -> None:
    """What a restart does: a new Sessions over the same database knows the login (and its
    CSRF token); the table holds the id's digest only."""
    from magickbox.auth.models import LoginSession

    sid, session = Sessions(db, 60).create("ann", Role.operator)
    again = Sessions(db, 60).get(sid)
    assert again is not None and (again.user, again.role, again.csrf) == ("ann", Role.operator,
                                                                          session.csrf)  # fmt: skip
    with db() as s:
        (row,) = s.query(LoginSession).all()
    assert row.digest == hashing.token_digest(sid) and sid not in (row.digest, row.csrf)


def test_failed_logins_are_throttled_per_address_and_user() -> None:
    throttle = LoginThrottle(max_failures=3, window_seconds=60)
    for _ in range(3):
        throttle.check("10.0.0.1", "ann")
        throttle.failed("10.0.0.1", "ann")
    with pytest.raises(TooManyRequests) as raised:
        throttle.check("10.0.0.1", "bob")  # the address is held
    assert int(raised.value.headers["Retry-After"]) > 0
    with pytest.raises(TooManyRequests):
        throttle.check("10.0.0.2", "ann")  # and so is the user
    throttle.check("10.0.0.2", "bob")


def test_login_audits_both_outcomes(db: sessionmaker, tmp_path: Path) -> None:
    auth = Authority(Settings(home=tmp_path, login_max_failures=2, password_hash_cost=CHEAP), db)
    auth.store.add_user("ann", Role.viewer, "long enough")
    with pytest.raises(Unauthorized):
        auth.login("ann", "wrong password", "10.1.1.1")
    sid, _ = auth.login("ann", "long enough", "10.1.1.1")
    found = auth.by_session(sid, "10.1.1.1")
    assert found is not None and found[0].role is Role.viewer
    events = auth.log.page(auth_filter(), 10, 0)["events"]
    assert [e["action"] for e in events] == ["login", "login_failed"]
    assert events[1]["target"] == "ann" and events[1]["address"] == "10.1.1.1"
    assert "wrong password" not in str(events)


def auth_filter():  # type: ignore[no-untyped-def]
    from magickbox.auth.audit import AuditFilter

    return AuditFilter()


def test_trusted_networks() -> None:
    auth_nets = parse_trusted(["127.0.0.0/8=operator", "10.0.0.0/8=viewer"])
    assert [(str(t.network), t.role) for t in auth_nets] == [
        ("127.0.0.0/8", Role.operator),
        ("10.0.0.0/8", Role.viewer),
    ]
    for bad in (["10.0.0.0/8=admin"], ["not-a-net=viewer"], ["10.0.0.0/8=boss"]):
        with pytest.raises(Invalid):
            parse_trusted(bad)


def test_a_trusted_network_gives_its_role(db: sessionmaker, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        trusted_networks=["10.0.0.0/8=viewer", "10.1.0.0/16=operator"],
        password_hash_cost=CHEAP,
    )
    auth = Authority(settings, db)
    assert auth.by_network("10.1.2.3").role is Role.operator  # type: ignore[union-attr]
    assert auth.by_network("10.2.2.3").role is Role.viewer  # type: ignore[union-attr]
    assert auth.by_network("::ffff:10.2.2.3").role is Role.viewer  # type: ignore[union-attr]
    assert auth.by_network("127.0.0.1") is None
    assert auth.by_network("testclient") is None


def test_host_of() -> None:
    assert host_of("Box.Example:2813") == "box.example"
    assert host_of("[::1]:2813") == "::1"
    assert host_of("127.0.0.1") == "127.0.0.1"


def test_a_removed_user_or_a_new_password_ends_its_sessions(
    db: sessionmaker, tmp_path: Path
) -> None:
    auth = Authority(Settings(home=tmp_path, password_hash_cost=CHEAP), db)
    auth.store.add_user("ann", Role.operator, "long enough")
    auth.store.add_user("bob", Role.admin, "long enough")
    ann, _ = auth.login("ann", "long enough", "10.1.1.1")
    bob, _ = auth.login("bob", "long enough", "10.1.1.1")
    auth.store.set_password("ann", "another long one")
    assert auth.by_session(ann, "10.1.1.1") is None
    assert auth.by_session(bob, "10.1.1.1") is not None
    auth.store.add_user("cid", Role.admin, "long enough")
    auth.store.remove_user("bob")
    assert auth.by_session(bob, "10.1.1.1") is None
