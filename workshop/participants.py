"""Participants of a workshop as local Unix users (run as root, on the hub machine).

    sudo .venv/bin/python workshop/participants.py add 12                 # ws01..ws12, passwords on a sheet
    sudo .venv/bin/python workshop/participants.py add 3 --prefix rehearsal --home-root /srv/ws
    sudo .venv/bin/python workshop/participants.py reset ws07             # fresh notebooks for one person
    sudo .venv/bin/python workshop/participants.py remove 12              # after the workshop

Each participant is an ordinary account in the group the hub admits (``--group``, default ``ftlab``),
with a 0700 home and no login shell. Passwords are random; ``add`` writes them to a sheet only root
can read (``--sheet``) and prints where it is. ``reset`` stops nothing by itself: stop the person's
server on the hub's admin page (or ``DELETE /hub/api/users/<name>/server``) first; their next start
copies the notebooks afresh, their old copy is kept as ``ftlab-notebooks.old-<time>``.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import secrets
import subprocess
import sys
import time
from pathlib import Path


def names(count: int, prefix: str) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(1, count + 1)]


def add(count: int, prefix: str, group: str, home_root: str, sheet: str) -> list[tuple[str, str]]:
    """Create the group and ``count`` users with random passwords; return (name, password) pairs."""
    try:
        grp.getgrnam(group)
    except KeyError:
        subprocess.run(["groupadd", group], check=True, timeout=30)
    created = []
    for name in names(count, prefix):
        password = secrets.token_urlsafe(9)
        try:
            pwd.getpwnam(name)
            raise SystemExit(f"user {name} already exists. Fix: choose another --prefix, or `remove` first.")
        except KeyError:
            pass
        home = Path(home_root) / name
        subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--gid", group,
                        "--shell", "/usr/sbin/nologin", name], check=True, timeout=30)
        os.chmod(home, 0o700)  # each participant's files are theirs alone
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, timeout=30)
        created.append((name, password))
    path = Path(sheet)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.writelines(f"{n}\t{p}\n" for n, p in created)
    print(f"added {len(created)} participants to group {group!r}; passwords in {path} (root only)")
    return created


def remove(count: int, prefix: str) -> None:
    """Delete the users and their homes (their servers must be stopped: stop the hub first)."""
    for name in names(count, prefix):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        subprocess.run(["userdel", "--remove", name], check=False, timeout=60, capture_output=True)
        print(f"removed {name}")


def reset(name: str) -> None:
    """Move a participant's notebook copy aside; the hub copies fresh notebooks at their next start."""
    home = Path(pwd.getpwnam(name).pw_dir)
    current = home / "ftlab-notebooks"
    if current.exists():
        current.rename(home / f"ftlab-notebooks.old-{time.strftime('%H%M%S')}")
    print(f"{name}: notebooks will be copied afresh at the next server start")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in ("add", "remove"):
        p = sub.add_parser(cmd)
        p.add_argument("count", type=int)
        p.add_argument("--prefix", default="ws")
        if cmd == "add":
            p.add_argument("--group", default="ftlab")
            p.add_argument("--home-root", default="/home")
            p.add_argument("--sheet", default="/root/ftlab-workshop-passwords.tsv")
    p = sub.add_parser("reset")
    p.add_argument("name")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("participants.py manages Unix users: run it as root (sudo).")
    if args.command == "add":
        add(args.count, args.prefix, args.group, args.home_root, args.sheet)
    elif args.command == "remove":
        remove(args.count, args.prefix)
    else:
        reset(args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
