"""The README's table of what each role may do, made from the routes' declared roles.

``python -m magickbox.web.rolesdoc --readme README.md`` rewrites the block between
``<!-- roles:start -->`` and ``<!-- roles:end -->``; a test checks it is current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastapi.routing import APIRoute

from magickbox.auth.roles import Role
from magickbox.web.security import requirement_of

START, END = "<!-- roles:start -->", "<!-- roles:end -->"
WHO = {
    Role.public: "anyone",
    Role.viewer: "viewer, operator, admin",
    Role.operator: "operator, admin",
    Role.admin: "admin",
}


def roles_markdown() -> str:
    from magickbox.web.app import ROUTERS

    rows = []
    for router in ROUTERS:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            needed = requirement_of(route)[0]
            trusted = "yes" if needed.legacy and needed.role <= Role.operator else ""
            for method in sorted(route.methods or ()):
                rows.append((route.path, method, WHO[needed.role], trusted))
    lines = ["| path | method | who may | trusted networks without credentials |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| `{p}` | {m} | {w} | {t} |" for p, m, w, t in sorted(rows)]
    return "\n".join(lines) + "\n"


def replace_block(readme: str, block: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{block}{END}{tail}"


def current_block(readme: str) -> str:
    return readme.partition(START)[2].partition(END)[0].removeprefix("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magickbox.web.rolesdoc", description=__doc__)
    parser.add_argument("--readme", type=Path, help="rewrite the roles block of this README")
    args = parser.parse_args(argv)
    if args.readme:
        text = args.readme.read_text(encoding="utf-8")
        args.readme.write_text(replace_block(text, roles_markdown()), encoding="utf-8")
    else:
        sys.stdout.write(roles_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
