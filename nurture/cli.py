"""The `nurture` command: manage API keys from a shell on a server.

nurture keys create --role marketer --name "Spring campaign team"
nurture keys list
nurture keys revoke 7
"""

import argparse
import sys
from datetime import timedelta

import sqlalchemy as sa

from nurture.config import get_settings
from nurture.db import create_db_engine, migrate, session_scope
from nurture.keys import ROLES, ApiKeyOut, create_key, list_keys, revoke_key
from nurture.models import utcnow

CLI_ACTOR = "cli"


def _create(args: argparse.Namespace) -> int:
    expires_at = (
        utcnow() + timedelta(days=args.expires_in_days)
        if args.expires_in_days
        else None
    )
    engine = create_db_engine(get_settings().database_url)
    with session_scope(engine) as session:
        row, key = create_key(
            session, args.role, args.name, CLI_ACTOR, expires_at=expires_at
        )
        key_id = row.id
    until = f", expires {expires_at:%Y-%m-%d}" if expires_at else ""
    print(f"key {key_id} ({args.role}{until}):")  # noqa: T201
    print(key)  # noqa: T201
    print("Store it now: it is not shown again.", file=sys.stderr)  # noqa: T201
    return 0


def _list(_args: argparse.Namespace) -> int:
    engine = create_db_engine(get_settings().database_url)
    with session_scope(engine) as session:
        rows = [ApiKeyOut.from_row(row) for row in list_keys(session)]
    for row in rows:
        state = (
            "revoked"
            if row.revoked_at
            else "expired"
            if row.expires_at and row.expires_at <= utcnow()
            else "active"
        )
        until = f"{row.expires_at:%Y-%m-%d}" if row.expires_at else "never"
        print(  # noqa: T201
            f"{row.id:>4}  {row.prefix}…  {row.role:<11}  {state:<7}  "
            f"expires {until:<10}  {row.name}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    engine = create_db_engine(get_settings().database_url)
    with session_scope(engine) as session:
        row = revoke_key(session, args.id, CLI_ACTOR)
    if row is None:
        print(f"no key {args.id}: see `nurture keys list`", file=sys.stderr)  # noqa: T201
        return 1
    print(f"key {args.id} ({row.name}) is revoked")  # noqa: T201
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nurture", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print it once")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument(
        "--name", required=True, help="who or what uses the key, e.g. 'website form'"
    )
    create.add_argument(
        "--expires-in-days", type=int, default=None, help="default: never expires"
    )
    create.set_defaults(run=_create)
    actions.add_parser("list", help="list keys, without the keys").set_defaults(
        run=_list
    )
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(run=_revoke)
    args = parser.parse_args(argv)
    if args.command == "keys" and args.action == "create" and args.expires_in_days:
        if args.expires_in_days < 1:
            parser.error("--expires-in-days must be 1 or more")
    database_url = get_settings().database_url
    # Keys live in one database. Print which, so a key made against the wrong
    # one (a DATABASE_URL missing from this shell) is noticed at once.
    shown = sa.make_url(database_url).render_as_string(hide_password=True)
    print(f"database: {shown}", file=sys.stderr)  # noqa: T201
    try:
        migrate(database_url)
        result: int = args.run(args)
    except sa.exc.OperationalError as error:
        reason = str(error.orig or error).strip().splitlines()[0]
        print(  # noqa: T201
            f"nurture: the database is unreachable ({reason}); check DATABASE_URL "
            "and that the database runs, then try again",
            file=sys.stderr,
        )
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
