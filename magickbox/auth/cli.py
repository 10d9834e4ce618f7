"""``magickbox users`` and ``magickbox tokens``: who may use the box's web API and page.

They change the home's database directly, so they work whether or not the box runs (a
running box sees new users and tokens at once, and a removed user's or a new password's
page logins end at once). Exit codes: 0 ok; 2 bad arguments; 3 exists already; 4 no
such user or token.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from typing import Any

from magickbox.auth.audit import AuditLog
from magickbox.auth.principal import Principal
from magickbox.auth.roles import HOLDABLE, Role
from magickbox.auth.store import AuthStore
from magickbox.config import Settings
from magickbox.errors import Conflict, Invalid, MagickBoxError, NotFound

ROLES = [r.name for r in HOLDABLE]


def add_parsers(sub: argparse._SubParsersAction, home_option: Any) -> None:
    """The ``users`` and ``tokens`` groups; ``home_option(parser)`` adds --home."""
    users = sub.add_parser("users", help="add, list and remove users; set passwords")
    users.description = __doc__
    ucmd = users.add_subparsers(dest="users_command", required=True)
    p = ucmd.add_parser("add", help="add a user (asks for the password)")
    p.add_argument("name")
    p.add_argument("--role", choices=ROLES, default="viewer")
    _password_options(p)
    ucmd.add_parser("list", help="users and their roles")
    p = ucmd.add_parser("remove", help="remove a user (never the last admin)")
    p.add_argument("name")
    p = ucmd.add_parser("passwd", help="set a user's password (asks for it)")
    p.add_argument("name")
    _password_options(p)

    tokens = sub.add_parser("tokens", help="create, list and revoke API tokens")
    tokens.description = __doc__
    tcmd = tokens.add_subparsers(dest="tokens_command", required=True)
    p = tcmd.add_parser("create", help="a new token, printed once (store it: it is not kept)")
    p.add_argument("name", help="what the token is for, e.g. backup-script")
    p.add_argument("--role", choices=ROLES, default="viewer")
    p.add_argument("--expires-days", type=float, help="valid this many days (default: no end)")
    tcmd.add_parser("list", help="tokens (never their secrets) and their state")
    p = tcmd.add_parser("revoke", help="revoke a token by id, or every active one of a name")
    p.add_argument("token", help="id or name")
    for parser in (*ucmd.choices.values(), *tcmd.choices.values()):
        home_option(parser)


def _password_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    from magickbox.home import init_home
    from magickbox.jobs.db import open_database

    init_home(settings)  # a first "users add" may come before the first serve
    try:
        db = open_database(settings.db_url)
    except MagickBoxError as exc:  # e.g. a database a newer MagickBox migrated
        print(f"magickbox: {exc}", file=sys.stderr)
        return _exit_code(exc)
    store, audit = AuthStore(db, settings.password_hash_cost), AuditLog(db)
    me = Principal("cli", getpass.getuser(), Role.admin, "local")
    try:
        if args.command == "users":
            return _users(args, store, audit, me)
        return _tokens(args, store, audit, me)
    except MagickBoxError as exc:
        print(f"magickbox: {exc}", file=sys.stderr)
        return _exit_code(exc)
    finally:
        db.kw["bind"].dispose()


def _exit_code(exc: MagickBoxError) -> int:
    if isinstance(exc, Conflict):
        return 3
    return 4 if isinstance(exc, NotFound) else 2


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise Invalid("the passwords differ")
    return first


def _users(args: argparse.Namespace, store: AuthStore, audit: AuditLog, me: Principal) -> int:
    cmd = args.users_command
    if cmd == "list":
        for user in store.users():
            print(f"{user['name']}\t{user['role']}")
    elif cmd == "add":
        store.add_user(args.name, Role.parse(args.role), _read_password(args))
        audit.record(me, "user_add", args.name, role=args.role)
        print(f"user {args.name} ({args.role}) added")
    elif cmd == "remove":
        store.remove_user(args.name)
        audit.record(me, "user_remove", args.name)
        print(f"user {args.name} removed")
    else:
        store.set_password(args.name, _read_password(args))
        audit.record(me, "user_password", args.name)
        print(f"password of {args.name} set")
    return 0


def _tokens(args: argparse.Namespace, store: AuthStore, audit: AuditLog, me: Principal) -> int:
    cmd = args.tokens_command
    if cmd == "list":
        for t in store.tokens():
            print(json.dumps(t.as_dict()))
    elif cmd == "create":
        days = args.expires_days
        if days is not None and days <= 0:
            raise Invalid("--expires-days must be more than 0")
        expires = time.time() + days * 86400 if days else None
        secret, info = store.create_token(args.name, Role.parse(args.role), expires, me.label)
        audit.record(me, "token_create", info.name, id=info.id, role=info.role)
        print(secret)  # the only time it is shown
        print(f"token {info.id} ({info.name}, {info.role}): keep it, it is not shown again",
              file=sys.stderr)  # fmt: skip
    else:
        for info in store.revoke_token(args.token):
            audit.record(me, "token_revoke", info.name, id=info.id)
            print(f"token {info.id} ({info.name}) revoked")
    return 0
