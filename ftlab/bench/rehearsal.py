"""A workshop rehearsal: N participants log in to the hub over https and run a notebook at the same time.

    sudo .venv/bin/python -m ftlab.bench.rehearsal --participants 12                  # ci profile, notebook 00
    sudo .venv/bin/python -m ftlab.bench.rehearsal --participants 12 --profile laptop  # where memory allows

Root only (it creates Unix users with ``workshop/participants.py``, and removes them at the end). It
makes a self-signed certificate for 127.0.0.1 (``workshop/cert.py``), a shared read-only copy of the
model cache, and starts the hub from ``workshop/jupyterhub_config.py`` on free ports. Every participant
logs in through the login form over https (the client trusts that certificate and nothing else), their
servers start, and all run the notebook at once, a kernel each, every code cell sent over the kernel's
websocket as JupyterLab does. Then each kernel tries to list every other participant's home.

It prints: time to all-done, the peak memory (the participants' processes, summed PSS, and the whole
machine's used memory above its level before the hub) against ``ftlab workshop plan``'s prediction for
that notebook x N, failed logins and kernels, and whether anyone could see another's files. Exit
status 1 on any failure. The helpers here are also the CI rehearsal's (tests/test_workshop.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from ftlab.bench.hub_kernel import Kernel

ROOT = Path(__file__).resolve().parents[2]
GiB = 2**30


def workshop_module(name: str):
    """Import a script of workshop/ (not a package: the instructor runs them as files)."""
    sys.path.insert(0, str(ROOT / "workshop"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_for(what, predicate, timeout, every=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout} s")


def processes_of(uids) -> list[int]:
    """Pids of live (not zombie) processes owned by these uids, from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) in uids and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry.name))
    return pids


def memory_of(pids, field="Pss") -> int:
    """Bytes of ``field`` (Pss: shared pages split between their users; Rss) summed over ``pids``."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) * 1024
        except OSError:  # exited meanwhile
            pass
    return total


def machine_used() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024


def grant_traverse(paths) -> list[tuple[Path, int]]:
    """Give 'others' the traverse bit on every folder above ``paths`` that lacks it; return what to restore."""
    changed = []
    for path in paths:
        for folder in reversed(Path(path).resolve().parents):
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH and all(folder != f for f, _ in changed):
                folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
                changed.append((folder, stat.S_IMODE(mode)))
    return changed


@contextlib.contextmanager
def room(n_users: int):
    """N participants (Unix users in their own group), a shared read-only model cache, a certificate for 127.0.0.1."""
    from ftlab.models import smollm2_dir

    participants, cert = workshop_module("participants"), workshop_module("cert")
    tag = secrets.token_hex(3)
    base = Path(tempfile.mkdtemp(prefix=f"ftlab-ws-{tag}-", dir="/tmp"))
    base.chmod(0o755)
    cache = base / "ftlab-home"
    # What the instructor does once: a shared, read-only copy of the converted model for everyone.
    shutil.copytree(smollm2_dir(), cache / "models" / smollm2_dir().name)
    for path in [cache, *cache.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (base / "homes").mkdir(mode=0o755)
    cert_path, key_path, _ = cert.self_signed(base / "state" / "tls", ["127.0.0.1", "localhost"], days=1)
    restore = grant_traverse([sys.executable, os.path.realpath(sys.executable), ROOT])
    prefix, group = f"ftws{tag}u", f"ftws{tag}"
    created = []
    try:
        created = participants.add(n_users, prefix, group, str(base / "homes"))
        uids = {pwd.getpwnam(n).pw_uid for n, _ in created}
        yield dict(base=base, cache=cache, users=dict(created), group=group, uids=uids, cert=cert_path, key=key_path)
    finally:
        participants.remove([n for n, _ in created])  # ends any process left under their uids, too
        subprocess.run(["groupdel", group], check=False, timeout=30, capture_output=True)
        for folder, mode in restore:
            folder.chmod(mode)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def hub(the_room, **settings):
    """Start the hub for ``the_room`` over https on free ports; yield (base URL, instructor token, hub process).

    ``settings`` are extra environment variables (WORKSHOP_IDLE_MINUTES=...). On exit: SIGTERM and wait.
    """
    import requests

    port, hub_port, api_port = free_ports(3)
    token = secrets.token_hex(16)
    env = {**os.environ, "WORKSHOP_STATE": str(the_room["base"] / "state"), "WORKSHOP_PORT": str(port),
           "WORKSHOP_HUB_PORT": str(hub_port), "WORKSHOP_PROXY_API_PORT": str(api_port),
           "WORKSHOP_GROUP": the_room["group"], "WORKSHOP_PARTICIPANTS": str(len(the_room["users"])),
           "WORKSHOP_API_TOKEN": token, "FTLAB_HOME": str(the_room["cache"]), "FTLAB_PROFILE": "ci",
           "FTLAB_MEMORY_BUDGET_GIB": "3", "WORKSHOP_MACHINE_GIB": "64", **settings}
    env.pop("FTLAB_SOLUTIONS", None)  # participants who answered nothing: the notebook must still run
    base = f"https://127.0.0.1:{port}"
    log = open(the_room["base"] / "hub.log", "a")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", str(ROOT / "workshop" / "jupyterhub_config.py")],
                            cwd=the_room["base"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = dict(base=base, token=token, proc=proc, port=port, hub_api=f"http://127.0.0.1:{hub_port}/hub/api",
                verify=str(the_room["cert"]), admin={"Authorization": f"token {token}"})

    def healthy():
        if proc.poll() is not None:
            raise RuntimeError(f"the hub exited with {proc.returncode}:\n{(the_room['base'] / 'hub.log').read_text()[-3000:]}")
        try:
            return requests.get(f"{base}/hub/health", timeout=5, verify=info["verify"]).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for("hub health", healthy, 90)
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            log.close()


def login(info, name, password):
    """Log ``name`` in through the form, as a browser does; return the session, or None if refused."""
    import requests

    s = requests.Session()
    # trust exactly the room's certificate: without trust_env=False, $REQUESTS_CA_BUNDLE would replace it
    s.trust_env, s.verify = False, info["verify"]
    s.get(f"{info['base']}/hub/login", timeout=30)
    r = s.post(f"{info['base']}/hub/login", data={"username": name, "password": password, "_xsrf": s.cookies.get("_xsrf")},
               allow_redirects=False, timeout=60)
    return s if r.status_code == 302 and "login" not in r.headers.get("location", "login") else None


def start_servers(info, names, timeout=150):
    """Start these users' servers through the hub's API and wait until all are ready."""
    import requests

    for name in names:
        r = requests.post(f"{info['base']}/hub/api/users/{name}/server", headers=info["admin"], timeout=60, verify=info["verify"])
        assert r.status_code in (201, 202), (name, r.status_code, r.text)

    def ready(name):
        user = requests.get(f"{info['base']}/hub/api/users/{name}", headers=info["admin"], timeout=30, verify=info["verify"]).json()
        return bool(user["servers"].get("", {}).get("ready"))

    for name in names:
        wait_for(f"{name}'s server", lambda: ready(name), timeout, every=1)


def user_token(info, name):
    import requests

    r = requests.post(f"{info['base']}/hub/api/users/{name}/tokens", headers=info["admin"], json={"expires_in": 3600},
                      timeout=60, verify=info["verify"])
    return r.json()["token"]


async def run_notebook(info, user, token, notebook, timeout, probe=None):
    """Send every code cell of ``notebook`` to a new kernel of ``user``; then ``probe`` (code) if given.

    Returns (seconds for the notebook, the probe's output)."""
    kernel = await Kernel(info, user, token).start(notebook)
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    start = time.time()
    try:
        for index, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
            try:
                await kernel.run("".join(cell["source"]), timeout - (time.time() - start))
            except AssertionError as e:
                raise AssertionError(f"{notebook} cell {index}: {e}") from None
        seconds = time.time() - start
        return seconds, (await kernel.run(probe, 60) if probe else "")
    finally:
        await kernel.close()


def peeking_code(others_homes) -> str:
    """Kernel code that tries to list each of these homes and prints what it could see."""
    return ("import os, json\nseen = {}\n"
            f"for h in {[str(h) for h in others_homes]!r}:\n"
            "    try:\n        seen[h] = os.listdir(h)\n    except PermissionError:\n        pass\n"
            "print(json.dumps(seen))\n")


def is_kernel(pid) -> bool:
    try:
        return b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Sampler(threading.Thread):
    """Every ``every`` seconds: the participants' summed PSS (all their processes, and their kernels
    alone: what the plan predicts) and the machine's used memory; keeps the peaks."""

    def __init__(self, uids, every=1.0):
        super().__init__(daemon=True)
        self.uids, self.every, self.stop = uids, every, threading.Event()
        self.peak_pss = self.peak_kernels = self.peak_used = 0

    def run(self):
        while not self.stop.wait(self.every):
            pids = processes_of(self.uids)
            self.peak_pss = max(self.peak_pss, memory_of(pids))
            self.peak_kernels = max(self.peak_kernels, memory_of([p for p in pids if is_kernel(p)]))
            self.peak_used = max(self.peak_used, machine_used())


def reached_others(info, tokens) -> list[str]:
    """Each participant's token against every other's server: "me -> other" for each that was not refused."""
    import requests

    reached = []
    for me in tokens:
        for other in tokens:
            if other != me:
                r = requests.get(f"{info['base']}/user/{other}/api/contents", headers={"Authorization": f"token {tokens[me]}"},
                                 timeout=30, verify=info["verify"])
                if r.status_code != 403:
                    reached.append(f"{me} -> {other}: {r.status_code}")
    return reached


def rehearse(n: int, notebook: str, profile: str, timeout: int) -> dict:
    """The whole rehearsal; returns the report (also printed by ``main``)."""
    from ftlab.workshop import make_plan

    plan = make_plan(n, device="cpu", profile=profile)
    row = next(r for r in plan["notebooks"] if r["notebook"] == Path(notebook).stem)
    report = dict(participants=n, notebook=notebook, profile=profile, load_before=os.getloadavg()[0],
                  failed_logins=[], failed_kernels={}, saw_others={})
    with room(n) as r:
        base_used = machine_used()
        t0 = time.time()
        with hub(r, FTLAB_PROFILE=profile, FTLAB_MEMORY_BUDGET_GIB=f"{plan['budget_gib']:g}",
                 WORKSHOP_MACHINE_GIB=f"{plan['usable_gib']}") as info:
            report["hub_up_s"] = round(time.time() - t0, 1)
            for name, password in r["users"].items():
                if login(info, name, password) is None:
                    report["failed_logins"].append(name)
            inside = [name for name in r["users"] if name not in report["failed_logins"]]
            start_servers(info, inside, timeout=300)
            report["servers_ready_s"] = round(time.time() - t0, 1)
            tokens = {name: user_token(info, name) for name in inside}
            homes = {name: pwd.getpwnam(name).pw_dir for name in r["users"]}
            sampler = Sampler(r["uids"])
            sampler.start()
            t_run = time.time()

            async def everyone():
                return await asyncio.gather(*(run_notebook(info, name, tokens[name], notebook, timeout,
                                                           probe=peeking_code([h for o, h in homes.items() if o != name]))
                                              for name in inside), return_exceptions=True)

            results = asyncio.run(everyone())
            report["all_done_s"] = round(time.time() - t_run, 1)
            sampler.stop.set()
            sampler.join()
            for name, result in zip(inside, results):
                if isinstance(result, BaseException):
                    report["failed_kernels"][name] = f"{type(result).__name__}: {result}"[:300]
                elif json.loads(result[1]):
                    report["saw_others"][name] = json.loads(result[1])
            report["notebook_s"] = sorted(round(x[0], 1) for x in results if not isinstance(x, BaseException))
            report["token_reached_others"] = reached_others(info, tokens)
        report["hub_exit"] = info["proc"].returncode
    report.update(peak_participants_pss_gib=round(sampler.peak_pss / GiB, 2),
                  peak_kernels_pss_gib=round(sampler.peak_kernels / GiB, 2),
                  peak_machine_used_above_idle_gib=round((sampler.peak_used - base_used) / GiB, 2),
                  plan_per_kernel_gib=row["peak_gib"], plan_total_gib=round(row["peak_gib"] * n, 2),
                  load_after=os.getloadavg()[0])
    report["ok"] = not (report["failed_logins"] or report["failed_kernels"] or report["saw_others"]
                        or report["token_reached_others"] or report["hub_exit"])
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=12)
    parser.add_argument("--notebook", default="00_concepts.ipynb")
    parser.add_argument("--profile", default="ci", choices=["ci", "laptop", "gpu"])
    parser.add_argument("--timeout", type=int, default=1800, help="seconds for each participant's notebook")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the rehearsal creates Unix users: run it as root (sudo).")
    rep = rehearse(args.participants, args.notebook, args.profile, args.timeout)
    print(json.dumps(rep, indent=1))
    print(f"\n{rep['participants']} participants, {rep['notebook']} ({rep['profile']}): all done in {rep['all_done_s']} s "
          f"after the servers were ready ({rep['servers_ready_s']} s after the hub started); "
          f"peak memory of the kernels {rep['peak_kernels_pss_gib']} GiB (PSS) vs the plan's {rep['plan_per_kernel_gib']} x "
          f"{rep['participants']} = {rep['plan_total_gib']} GiB; all the participants' processes (servers too) "
          f"{rep['peak_participants_pss_gib']} GiB; the machine +{rep['peak_machine_used_above_idle_gib']} GiB over its "
          f"level before (other jobs included); failed logins {len(rep['failed_logins'])}, failed kernels "
          f"{len(rep['failed_kernels'])}, participants who saw another's files {len(rep['saw_others'])}, "
          f"tokens that reached another's server {len(rep['token_reached_others'])}; load average {rep['load_before']:.1f} -> {rep['load_after']:.1f}")
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
