"""Participants of a workshop as local Unix users (run as root, on the hub machine).

    sudo .venv/bin/python workshop/participants.py add 12                 # ws01..ws12: the handout, printed once
    sudo .venv/bin/python workshop/participants.py add 3 --prefix late --expires 2026-12-05
    sudo .venv/bin/python workshop/participants.py reset ws07             # fresh notebooks for one person
    sudo .venv/bin/python workshop/participants.py collect 12 --to /root/ftlab-work   # everyone's work, before removal
    sudo WORKSHOP_API_TOKEN=... .venv/bin/python workshop/participants.py remove 12   # after the workshop

Each participant is an ordinary account in the group the hub admits (``--group``, default ``ftlab``),
with a 0700 home and no login shell. ``add`` gives each a random password and prints the list once,
for the handout: only the system's password hashes keep them (nothing else writes them anywhere;
a lost one is replaced with ``passwd NAME``). Accounts expire after ``--expires`` (default: the day
after tomorrow): PAM then refuses the log-in, even if the accounts are forgotten.
``remove`` stops each participant's server through the hub's API and deletes them from the hub
(when the hub runs and ``$WORKSHOP_API_TOKEN`` is its instructor token), ends any process left
under their uid, and deletes the account and its home: collect the work first.
``reset`` stops nothing by itself: stop the person's server on the hub's admin page first; their
next start copies the notebooks afresh, their old copy is kept as ``ftlab-notebooks.old-<time>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import grp
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def names(count: int, prefix: str) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(1, count + 1)]


# Lower-case letters and digits without look-alikes (l/1, o/0, i/j): typed from a printed handout.
ALPHABET = "abcdefghkmnpqrstuvwxyz23456789"


def new_password(length: int = 12) -> str:
    """A random password: 12 symbols of 30 are 58 bits, from the OS's secure generator."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def default_expiry() -> str:
    return (dt.date.today() + dt.timedelta(days=2)).isoformat()


def add(count: int, prefix: str, group: str, home_root: str, expires: str | None = None) -> list[tuple[str, str]]:
    """Create the group and ``count`` users with random passwords, expiring after ``expires`` (YYYY-MM-DD).

    Returns the (name, password) pairs; the passwords are kept nowhere else in clear text.
    """
    expires = expires or default_expiry()
    if dt.date.fromisoformat(expires) < dt.date.today():
        raise SystemExit(f"--expires {expires} is in the past. Fix: a date after the workshop (YYYY-MM-DD).")
    try:
        grp.getgrnam(group)
    except KeyError:
        subprocess.run(["groupadd", group], check=True, timeout=30)
    for name in names(count, prefix):  # check all first: no half-made class
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        raise SystemExit(f"user {name} already exists. Fix: choose another --prefix, or `remove` first.")
    created = []
    for name in names(count, prefix):
        password = new_password()
        home = Path(home_root) / name
        subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--gid", group, "--expiredate", expires,
                        "--shell", "/usr/sbin/nologin", name], check=True, timeout=30)
        os.chmod(home, 0o700)  # each participant's files are theirs alone
        # chpasswd reads the pair on stdin (never on a command line, where `ps` would show it) and stores a hash
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, timeout=30)
        created.append((name, password))
    return created


def print_handout(created, group: str, expires: str) -> None:
    print(f"{len(created)} participants in group {group!r}, accounts expire after {expires}.")
    print("Passwords are shown this once and stored nowhere in clear: print or copy this list now.\n")
    print(f"{'user':<12} password")
    for name, password in created:
        print(f"{name:<12} {password}")


def _hub_delete(name: str, hub_api: str, token: str) -> str:
    """Stop ``name``'s servers and delete the user from the hub; say what happened."""
    req = urllib.request.Request(f"{hub_api}/users/{name}", method="DELETE", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=120):
            return "hub: server stopped, user deleted"
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return "hub: not a hub user (never logged in)"
        raise SystemExit(f"hub API {hub_api}: DELETE /users/{name} answered {e.code} {e.read()[:200]!r}. "
                         "Fix: WORKSHOP_API_TOKEN must be the hub's instructor token.")
    except urllib.error.URLError:
        return "hub: not running (its servers stopped with it)"


def _end_processes(uid: int, grace_s: float = 10) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``, every process of ``uid``; return how many there were."""
    def pids():
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except OSError:
                pass
        return found

    first = pids()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while pids() and time.time() < deadline:
            time.sleep(0.2)
    return len(first)


def remove(users: list[str], hub_api: str | None = None, token: str | None = None) -> None:
    """Delete users: their hub servers and hub entries (if the hub runs), their processes, accounts and homes."""
    for name in users:
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
        said = _hub_delete(name, hub_api, token) if hub_api and token else "hub: not asked (no $WORKSHOP_API_TOKEN)"
        ended = _end_processes(uid)
        subprocess.run(["userdel", "--remove", name], check=True, timeout=60, capture_output=True)
        print(f"removed {name} ({said}; {ended} process(es) ended; account and home deleted)")


def collect(users: list[str], dest: str) -> None:
    """Copy each participant's notebooks folder to ``dest/<name>`` (root-owned, 0700) before removal."""
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in users:
        home = Path(pwd.getpwnam(name).pw_dir)
        if (home / "ftlab-notebooks").exists():
            subprocess.run(["cp", "-a", str(home / "ftlab-notebooks"), str(out / name)], check=True, timeout=600)
            print(f"{name}: {home / 'ftlab-notebooks'} -> {out / name}")


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
    for cmd in ("add", "remove", "collect"):
        p = sub.add_parser(cmd)
        p.add_argument("count", type=int)
        p.add_argument("--prefix", default="ws")
    add_p, remove_p, collect_p = (sub.choices[c] for c in ("add", "remove", "collect"))
    add_p.add_argument("--group", default="ftlab")
    add_p.add_argument("--home-root", default="/home")
    add_p.add_argument("--expires", default=None, help="last day of the accounts, YYYY-MM-DD (default: in 2 days)")
    remove_p.add_argument("--hub-api", default=f"http://127.0.0.1:{os.environ.get('WORKSHOP_HUB_PORT', '8081')}/hub/api",
                          help="the hub's API on this machine (default: %(default)s); token from $WORKSHOP_API_TOKEN")
    collect_p.add_argument("--to", required=True, help="folder for everyone's notebooks (one subfolder each)")
    p = sub.add_parser("reset")
    p.add_argument("name")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("participants.py manages Unix users: run it as root (sudo).")
    if args.command == "add":
        expires = args.expires or default_expiry()
        print_handout(add(args.count, args.prefix, args.group, args.home_root, expires), args.group, expires)
    elif args.command == "remove":
        remove(names(args.count, args.prefix), args.hub_api, os.environ.get("WORKSHOP_API_TOKEN"))
    elif args.command == "collect":
        collect(names(args.count, args.prefix), args.to)
    else:
        reset(args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
