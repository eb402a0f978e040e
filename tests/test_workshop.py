"""The workshop: `ftlab workshop plan`, and a rehearsal of the JupyterHub recipe (workshop/).

The rehearsal (root only: it creates Unix users) starts the hub on 127.0.0.1 with 3 participants,
logs each one in through the login form, starts their servers, and runs notebook 00 (ci profile) in
all three at once through the Jupyter server API (a kernel per user, every code cell sent over the
kernel's websocket, as JupyterLab does). Then it checks that nobody can reach another's server or
files, that an anonymous visitor gets the login page, and that stopping the hub leaves nothing behind.

What a real workshop does once, the test does in its set-up: the model cache is a shared read-only
copy (FTLAB_HOME, world-readable), and the course's Python must be reachable by every participant
(here the venv's interpreter lives under /root, so /root gets the traverse bit o+x for the test only).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from ftlab import workshop

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30


# --------------------------------------------------------------------------- the plan


def test_plan_reads_sizes_from_the_profile_and_schedules_waves():
    from ftlab.profiles import get_profile

    plan = workshop.make_plan(12, device="dgx-spark", profile="gpu")
    assert plan["budget_gib"] >= max(r["peak_gib"] for r in plan["notebooks"])
    rows = {r["notebook"]: r for r in plan["notebooks"]}
    assert set(rows) == {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}  # every notebook is planned
    for r in rows.values():
        assert r["at_once"] == int(plan["usable_gib"] * GiB // r["peak_bytes"])
    assert any(r["waves"] > 1 for r in rows.values()) and plan["warnings"]  # 12 x full FT of 1.7B does not fit at once
    # a bigger batch in the profile must make a training notebook heavier: the plan reads the profile
    bigger = get_profile("gpu", batch_size=32)
    before = workshop.notebook_peaks(get_profile("gpu"), "dgx-spark")
    after = workshop.notebook_peaks(bigger, "dgx-spark")
    assert after[3]["peak_bytes"] > before[3]["peak_bytes"]
    md = workshop.format_markdown(plan)
    assert "| 03_full_fine_tuning |" in md and "FTLAB_MEMORY_BUDGET_GIB" in md


def test_plan_counts_passes_that_score_every_position():
    """Perplexity, train_on="all" and transformers' own loss put logits at every position: 49,152 fp32
    numbers per token, which the plan must count (they were the misses of the first RSS check)."""
    from ftlab.memory import get_architecture
    from ftlab.profiles import get_profile

    prof, arch = get_profile("laptop"), get_architecture("smollm2-135m-instruct")
    assert workshop.score_bytes(arch, 8, 256) >= 2 * 8 * 256 * 49152 * 4
    assert workshop.score_bytes(arch, 8, 256) > 1.9 * workshop.score_bytes(arch, 4, 256)
    peak = {logits: workshop.step_peak(workshop.Step("a run", "train", "batch_size", "lora", logits=logits), prof)["run_bytes"]
            for logits in ("trained", "all", "full")}
    assert peak["trained"] < peak["all"] <= peak["full"]
    score = workshop.step_peak(workshop.Step("perplexity", "score", 8), prof)
    assert score["run_bytes"] == arch.num_parameters() * 4 + workshop.score_bytes(arch, 8, prof.max_length)


def test_plan_cli_markdown_and_json(capsys):
    from ftlab.cli import main

    assert main(["workshop", "plan", "--participants", "3", "--device", "dgx-spark", "--profile", "ci", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["participants"] == 3 and plan["profile"] == "ci" and not plan["warnings"]
    assert plan["schedule"] == ["every notebook fits all participants at once: no staggering needed"]
    assert main(["workshop", "plan", "--participants", "12", "--device", "dgx-spark"]) == 0
    assert "# Workshop plan: 12 participants on dgx-spark" in capsys.readouterr().out


def test_room_warning_names_the_numbers():
    assert workshop.room_warning(8, 12, 105.0) is None
    msg = workshop.room_warning(10, 12, 105.0)
    assert "12 participants x 10 GiB" in msg and "120 GiB" in msg and "105.0 GiB" in msg and "8.5 GiB" in msg


def test_model_cache_check_names_the_problem():
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # /tmp: every folder above is enterable by others
    try:
        base.chmod(0o755)
        home = base / "cache"
        assert "no converted model" in workshop.model_cache_problem(home)
        folder = home / "models" / "smollm2-135m-instruct"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        (folder / "ftlab_manifest.json").write_text(json.dumps({"files": {"model.safetensors": {"size": 10}}}))
        for p in [home, home / "models", folder]:
            p.chmod(0o755)
        (folder / "ftlab_manifest.json").chmod(0o644)
        (folder / "model.safetensors").chmod(0o600)
        assert workshop.model_cache_problem(home).startswith(f"{folder / 'model.safetensors'} is not readable")
        (folder / "model.safetensors").chmod(0o644)
        assert workshop.model_cache_problem(home) is None
        (folder / "model.safetensors").write_bytes(b"x" * 5)
        assert "wrong size" in workshop.model_cache_problem(home)
        (home / "models").chmod(0o700)
        assert workshop.model_cache_problem(home).startswith(f"{home / 'models'} is not readable")
    finally:
        shutil.rmtree(base)


# --------------------------------------------------------------------------- the rehearsal

N_USERS = 3
HUB_WAIT_S = 60
SPAWN_WAIT_S = 150
NOTEBOOK_WAIT_S = 420


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


async def run_notebook(base, user, token, notebook, timeout):
    """Start a kernel in ``user``'s server and send it every code cell of ``notebook``; return seconds."""
    import requests
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    headers = {"Authorization": f"token {token}"}
    r = await asyncio.to_thread(requests.post, f"{base}/user/{user}/api/kernels", headers=headers,
                                json={"name": "python3", "path": notebook}, timeout=60)
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    ws_url = f"{base.replace('http', 'ws')}/user/{user}/api/kernels/{kernel}/channels"
    ws = await websocket_connect(HTTPRequest(ws_url, headers=headers, connect_timeout=30, request_timeout=60))
    cells = json.loads(Path(ROOT / "notebooks" / notebook).read_text())["cells"]
    session, start = uuid.uuid4().hex, time.time()
    try:
        for index, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
            msg_id = uuid.uuid4().hex
            await ws.write_message(json.dumps({
                "header": {"msg_id": msg_id, "username": user, "session": session, "msg_type": "execute_request",
                           "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {}, "channel": "shell",
                "content": {"code": "".join(cell["source"]), "silent": False, "store_history": True,
                            "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
            while True:
                remaining = timeout - (time.time() - start)
                raw = await asyncio.wait_for(ws.read_message(), timeout=max(1, remaining))
                assert raw is not None, f"{user}: kernel websocket closed at cell {index}"
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "error":
                    raise AssertionError(f"{user}: cell {index} failed: {msg['content']['ename']}: {msg['content']['evalue']}")
                if msg["msg_type"] == "execute_reply":
                    assert msg["content"]["status"] == "ok", f"{user}: cell {index}: {msg['content']}"
                    break
    finally:
        ws.close()
        await asyncio.to_thread(requests.delete, f"{base}/user/{user}/api/kernels/{kernel}", headers=headers, timeout=60)
    return time.time() - start


@pytest.fixture
def room():
    """3 participants (Unix users in their own group), a shared read-only model cache, free ports."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("the rehearsal creates Unix users: run as root (CI does)")
    from ftlab.models import smollm2_dir

    tag = secrets.token_hex(3)
    base = Path(tempfile.mkdtemp(prefix=f"ftlab-ws-{tag}-", dir="/tmp"))
    base.chmod(0o755)
    cache = base / "ftlab-home"
    # What the instructor does once: a shared, read-only copy of the converted model for everyone.
    shutil.copytree(smollm2_dir(), cache / "models" / smollm2_dir().name)
    for path in [cache, *cache.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (base / "homes").mkdir(mode=0o755)
    restore = grant_traverse([sys.executable, os.path.realpath(sys.executable), ROOT])
    prefix, group = f"ftws{tag}u", f"ftws{tag}"
    sys.path.insert(0, str(ROOT / "workshop"))
    import participants

    sys.path.pop(0)
    created = participants.add(N_USERS, prefix, group, str(base / "homes"), str(base / "sheet.tsv"))
    uids = {__import__("pwd").getpwnam(n).pw_uid for n, _ in created}
    try:
        yield dict(base=base, cache=cache, users=dict(created), group=group, uids=uids)
    finally:
        for pid in processes_of(uids):  # only if the test failed half-way: the rehearsal's own processes
            os.kill(pid, signal.SIGKILL)
        participants.remove(N_USERS, prefix)
        subprocess.run(["groupdel", group], check=False, timeout=30, capture_output=True)
        for folder, mode in restore:
            folder.chmod(mode)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_rehearsal_three_participants_run_notebook_00_at_once(room):
    import requests

    port, hub_port, api_port = free_ports(3)
    base = f"http://127.0.0.1:{port}"
    token = secrets.token_hex(16)
    env = {**os.environ, "WORKSHOP_STATE": str(room["base"] / "state"), "WORKSHOP_PORT": str(port),
           "WORKSHOP_HUB_PORT": str(hub_port), "WORKSHOP_PROXY_API_PORT": str(api_port),
           "WORKSHOP_GROUP": room["group"], "WORKSHOP_PARTICIPANTS": str(N_USERS), "WORKSHOP_API_TOKEN": token,
           "FTLAB_HOME": str(room["cache"]), "FTLAB_PROFILE": "ci", "FTLAB_MEMORY_BUDGET_GIB": "3",
           "WORKSHOP_MACHINE_GIB": "64"}
    env.pop("FTLAB_SOLUTIONS", None)  # participants who answered nothing: the notebook must still run
    t0 = time.time()
    log = open(room["base"] / "hub.log", "w")
    hub = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", str(ROOT / "workshop" / "jupyterhub_config.py")],
                           cwd=room["base"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    admin = {"Authorization": f"token {token}"}
    timings = {}
    try:
        wait_for("hub health", lambda: _ok(requests, f"{base}/hub/health"), HUB_WAIT_S)
        timings["hub up"] = time.time() - t0

        # an anonymous visitor is sent to the login page, for the hub and for any user's server
        first = next(iter(room["users"]))
        for path in ("/hub/home", f"/user/{first}/lab"):
            r = requests.get(base + path, timeout=30)
            assert r.status_code == 200 and "/hub/login" in r.url and 'name="password"' in r.text, (path, r.url)

        # each participant logs in through the form (PAM checks the Unix password)...
        sessions = {}
        for name, password in room["users"].items():
            s = requests.Session()
            s.get(f"{base}/hub/login", timeout=30)
            r = s.post(f"{base}/hub/login", data={"username": name, "password": password, "_xsrf": s.cookies.get("_xsrf")},
                       allow_redirects=False, timeout=60)
            assert r.status_code == 302 and "login" not in r.headers["location"], (name, r.status_code)
            sessions[name] = s
        r = requests.Session().post(f"{base}/hub/login", data={"username": first, "password": "wrong"}, timeout=60)
        assert "/hub/login" in r.url or r.status_code in (403, 200)
        # ...and their servers start (as their own Unix user)
        for name in room["users"]:
            assert requests.post(f"{base}/hub/api/users/{name}/server", headers=admin, timeout=60).status_code in (201, 202)
        for name in room["users"]:
            wait_for(f"{name}'s server", lambda: _ready(requests, base, name, admin), SPAWN_WAIT_S, every=1)
        timings["servers ready"] = time.time() - t0
        tokens = {n: requests.post(f"{base}/hub/api/users/{n}/tokens", headers=admin, json={"expires_in": 900},
                                   timeout=60).json()["token"] for n in room["users"]}

        # all three run notebook 00 at the same time
        async def everyone():
            return await asyncio.gather(*(run_notebook(base, n, tokens[n], "00_concepts.ipynb", NOTEBOOK_WAIT_S)
                                          for n in room["users"]))

        seconds = asyncio.run(everyone())
        timings["notebook 00 per user"] = [round(s, 1) for s in seconds]
        timings["all finished"] = time.time() - t0

        # nobody reaches anybody else's server or files, by token or by browser cookie
        names = list(room["users"])
        for me, other in zip(names, names[1:] + names[:1]):
            r = requests.get(f"{base}/user/{other}/api/contents/00_concepts.ipynb",
                             headers={"Authorization": f"token {tokens[me]}"}, timeout=30)
            assert r.status_code == 403, (me, other, r.status_code)
            r = sessions[me].get(f"{base}/user/{other}/api/contents", timeout=30)
            assert r.status_code in (403, 404) or "/hub/login" in r.url or "content" not in r.text, (me, other, r.status_code)
            own = requests.get(f"{base}/user/{me}/api/contents/00_concepts.ipynb",
                               headers={"Authorization": f"token {tokens[me]}"}, timeout=30)
            assert own.status_code == 200
        # and the operating system agrees: homes are 0700 and owned by their user
        for name in names:
            home = Path(__import__("pwd").getpwnam(name).pw_dir)
            assert stat.S_IMODE(home.stat().st_mode) == 0o700 and home.stat().st_uid in room["uids"]
            assert (home / "ftlab-notebooks" / "00_concepts.ipynb").stat().st_uid == home.stat().st_uid
        assert all(processes_of({u}) for u in room["uids"])  # one server per user, running as that user
    finally:
        stop_start = time.time()
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(timeout=60)
        finally:
            log.close()
        timings["hub stop"] = time.time() - stop_start
        print(f"\n[rehearsal] {json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in timings.items()})}")
    assert hub.returncode == 0, (room["base"] / "hub.log").read_text()[-3000:]
    # the hub stopped every server and the proxy: nothing of the rehearsal is left
    wait_for("participants' processes to exit", lambda: not processes_of(room["uids"]), 30)
    proxy_pid = room["base"] / "state" / "proxy.pid"
    assert not proxy_pid.exists() or not Path(f"/proc/{proxy_pid.read_text().strip()}").exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _ok(requests, url):
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _ready(requests, base, name, admin):
    server = requests.get(f"{base}/hub/api/users/{name}", headers=admin, timeout=30).json()["servers"].get("")
    return bool(server and server.get("ready"))


def test_spawner_refuses_without_model_cache(tmp_path):
    """The hub's spawner names the `ftlab prefetch` fix when the shared cache is missing."""
    code = (
        "import asyncio, os, sys, types\n"
        f"sys.argv = ['x']; cfg = {{}}\n"
        "from traitlets.config import Config\n"
        "c = Config()\n"
        f"ns = {{'get_config': lambda: c, '__file__': {str(ROOT / 'workshop' / 'jupyterhub_config.py')!r}}}\n"
        f"exec(open(ns['__file__']).read(), ns)\n"
        "sp = ns['WorkshopSpawner'].__new__(ns['WorkshopSpawner'])\n"
        "try:\n"
        "    asyncio.run(ns['WorkshopSpawner'].start(sp))\n"
        "except RuntimeError as e:\n"
        "    print('REFUSED:', e)\n"
    )
    env = {**os.environ, "FTLAB_HOME": str(tmp_path / "nothing"), "WORKSHOP_STATE": str(tmp_path / "state"),
           "WORKSHOP_MACHINE_GIB": "1", "WORKSHOP_PARTICIPANTS": "4", "FTLAB_MEMORY_BUDGET_GIB": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "REFUSED:" in out.stdout, out.stderr[-2000:]
    assert "ftlab prefetch" in out.stdout and str(tmp_path / "nothing") in out.stdout
    # and budget x participants > machine printed the warning with the numbers
    assert "4 participants x 2 GiB budget = 8 GiB, more than the 1.0 GiB" in out.stderr
