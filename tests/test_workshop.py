"""The workshop: `ftlab workshop plan`, and a rehearsal of the JupyterHub recipe (workshop/).

The rehearsal (root only: it creates Unix users) starts the hub over https on 127.0.0.1 with 3
participants (a self-signed certificate that the client trusts explicitly), logs each one in through
the login form, starts their servers, and runs notebook 00 (ci profile) in all three at once through
the Jupyter server API (a kernel per user, every code cell sent over the kernel's websocket, as
JupyterLab does). Then it checks that nobody can reach another's server or files, that an anonymous
visitor gets the login page, that an expired account is refused, that `participants.py remove` takes a
participant out of a running hub, and that stopping the hub leaves nothing behind. The machinery is
``ftlab.bench.rehearsal``, which also runs the 12-participant rehearsal (a benchmark, not a test).
The culling test starts one participant's hub with a 12 s kernel and 30 s server idle timeout.
The TLS tests check that the hub refuses the network without a certificate and the certificate tool.

What a real workshop does once, the test does in its set-up: the model cache is a shared read-only
copy (FTLAB_HOME, world-readable), and the course's Python must be reachable by every participant
(here the venv's interpreter lives under /root, so /root gets the traverse bit o+x for the test only).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ftlab import workshop
from ftlab.bench import rehearsal

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
NOTEBOOK_WAIT_S = 420


@pytest.fixture
def room():
    """3 participants (Unix users in their own group), a shared read-only model cache, a certificate."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("the rehearsal creates Unix users: run as root (CI does)")
    with rehearsal.room(N_USERS) as r:
        yield r


@pytest.mark.slow
def test_rehearsal_three_participants_run_notebook_00_at_once_over_https(room):
    import requests

    participants = rehearsal.workshop_module("participants")
    t0 = time.time()
    timings = {}
    names = list(room["users"])
    with rehearsal.hub(room) as hub:
        base, verify = hub["base"], hub["verify"]
        timings["hub up"] = time.time() - t0
        assert base.startswith("https://")
        # plain http on the same port gets no login form: TLS is the only way in
        try:
            plain = requests.get(base.replace("https", "http") + "/hub/login", timeout=10)
            assert plain.status_code >= 400 and 'name="password"' not in plain.text, plain.status_code
        except requests.ConnectionError:
            pass
        # the client trusts the room's certificate, and nothing else: without it verification fails
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(base + "/hub/login", timeout=10)

        # an anonymous visitor is sent to the login page, for the hub and for any user's server
        for path in ("/hub/home", f"/user/{names[0]}/lab"):
            r = requests.get(base + path, timeout=30, verify=verify)
            assert r.status_code == 200 and "/hub/login" in r.url and 'name="password"' in r.text, (path, r.url)

        # each participant logs in through the form (PAM checks the Unix password)...
        sessions = {name: rehearsal.login(hub, name, password) for name, password in room["users"].items()}
        assert all(sessions.values()), sessions
        assert rehearsal.login(hub, names[0], "wrong") is None
        # ...and their servers start (as their own Unix user)
        rehearsal.start_servers(hub, names)
        timings["servers ready"] = time.time() - t0
        tokens = {n: rehearsal.user_token(hub, n) for n in names}

        # all three run notebook 00 at the same time, then try to list each other's homes from their kernel
        homes = {n: Path(pwd.getpwnam(n).pw_dir) for n in names}

        async def everyone():
            return await asyncio.gather(*(rehearsal.run_notebook(
                hub, n, tokens[n], "00_concepts.ipynb", NOTEBOOK_WAIT_S,
                probe=rehearsal.peeking_code([h for o, h in homes.items() if o != n])) for n in names))

        results = asyncio.run(everyone())
        timings["notebook 00 per user"] = [round(sec, 1) for sec, _ in results]
        timings["all finished"] = time.time() - t0
        assert all(json.loads(seen) == {} for _, seen in results), results  # no kernel could list another home

        # nobody reaches anybody else's server or files, by token or by browser cookie
        for me, other in zip(names, names[1:] + names[:1]):
            r = requests.get(f"{base}/user/{other}/api/contents/00_concepts.ipynb",
                             headers={"Authorization": f"token {tokens[me]}"}, timeout=30, verify=verify)
            assert r.status_code == 403, (me, other, r.status_code)
            r = sessions[me].get(f"{base}/user/{other}/api/contents", timeout=30)
            assert r.status_code in (403, 404) or "/hub/login" in r.url or "content" not in r.text, (me, other, r.status_code)
            own = requests.get(f"{base}/user/{me}/api/contents/00_concepts.ipynb",
                               headers={"Authorization": f"token {tokens[me]}"}, timeout=30, verify=verify)
            assert own.status_code == 200
        # and the operating system agrees: homes are 0700 and owned by their user
        for name in names:
            assert stat.S_IMODE(homes[name].stat().st_mode) == 0o700 and homes[name].stat().st_uid in room["uids"]
            assert (homes[name] / "ftlab-notebooks" / "00_concepts.ipynb").stat().st_uid == homes[name].stat().st_uid
        assert all(rehearsal.processes_of({u}) for u in room["uids"])  # one server per user, running as that user

        # an expired account is refused by PAM, password or not
        subprocess.run(["usermod", "--expiredate", "1970-01-02", names[1]], check=True, timeout=30)
        assert rehearsal.login(hub, names[1], room["users"][names[1]]) is None
        # `participants.py remove` takes a participant out while the hub runs: server, hub entry, account, home
        gone = names[2]
        uid = pwd.getpwnam(gone).pw_uid
        participants.remove([gone], hub["hub_api"], hub["token"])
        assert requests.get(f"{base}/hub/api/users/{gone}", headers=hub["admin"], timeout=30, verify=verify).status_code == 404
        assert not rehearsal.processes_of({uid}) and not homes[gone].exists()
        with pytest.raises(KeyError):
            pwd.getpwnam(gone)
        stop_start = time.time()
    timings["hub stop"] = time.time() - stop_start
    print(f"\n[rehearsal] {json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in timings.items()})}")
    assert hub["proc"].returncode == 0, (room["base"] / "hub.log").read_text()[-3000:]
    # the hub stopped every server and the proxy: nothing of the rehearsal is left
    rehearsal.wait_for("participants' processes to exit", lambda: not rehearsal.processes_of(room["uids"]), 30)
    proxy_pid = room["base"] / "state" / "proxy.pid"
    assert not proxy_pid.exists() or not Path(f"/proc/{proxy_pid.read_text().strip()}").exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", hub["port"]), timeout=2).close()


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


# --------------------------------------------------------------------------- TLS


def _load_config(env, tmp_path):
    """Run workshop/jupyterhub_config.py as JupyterHub would (no hub started); return the subprocess."""
    code = ("from traitlets.config import Config\nc = Config()\n"
            f"path = {str(ROOT / 'workshop' / 'jupyterhub_config.py')!r}\n"
            "exec(open(path).read(), {'get_config': lambda: c, '__file__': path})\n"
            "print('SSL', c.JupyterHub.get('ssl_cert'), 'IP', c.JupyterHub.ip)\n")
    env = {**os.environ, "WORKSHOP_STATE": str(tmp_path / "state"), "WORKSHOP_MACHINE_GIB": "64", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_hub_refuses_the_network_without_a_certificate(tmp_path):
    for ip in ("0.0.0.0", "::", "192.0.2.7"):
        out = _load_config({"WORKSHOP_IP": ip}, tmp_path)
        assert out.returncode == 2, (ip, out.stdout, out.stderr[-2000:])
        assert "refusing to listen" in out.stderr and "make workshop-cert" in out.stderr and "SSL" not in out.stdout
    # the real command exits non-zero too, before it binds anything
    hub = subprocess.run([str(Path(sys.executable).parent / "jupyterhub"), "-f", str(ROOT / "workshop" / "jupyterhub_config.py")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "WORKSHOP_IP": "0.0.0.0", "WORKSHOP_STATE": str(tmp_path / "state")})
    assert hub.returncode != 0 and "make workshop-cert" in hub.stderr + hub.stdout
    # loopback needs no certificate (a rehearsal on this machine)
    out = _load_config({"WORKSHOP_IP": "127.0.0.1"}, tmp_path)
    assert out.returncode == 0 and "SSL None IP 127.0.0.1" in out.stdout, out.stderr[-2000:]
    # with `make workshop-cert`'s files in the state folder, the hub serves https on the network
    rehearsal.workshop_module("cert").main(["--out", str(tmp_path / "state" / "tls")])
    out = _load_config({"WORKSHOP_IP": "0.0.0.0"}, tmp_path)
    assert out.returncode == 0 and f"SSL {tmp_path / 'state' / 'tls' / 'cert.pem'} IP 0.0.0.0" in out.stdout, out.stderr[-2000:]


def test_workshop_cert_self_signed_and_own(tmp_path, capsys):
    import ssl

    from cryptography import x509

    cert = rehearsal.workshop_module("cert")
    out = tmp_path / "tls"
    assert cert.main(["--out", str(out), "--name", "spark.example", "--name", "10.1.2.3"]) == 0
    printed = capsys.readouterr().out
    made = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert cert.fingerprint(made) in printed and stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    san = made.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "spark.example" in san.get_values_for_type(x509.DNSName) and socket.gethostname() in san.get_values_for_type(x509.DNSName)
    assert {"10.1.2.3", "127.0.0.1"} <= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    ssl.create_default_context(cafile=str(out / "cert.pem")).load_cert_chain(out / "cert.pem", out / "key.pem")  # a pair
    # a second run keeps it (the room may trust its fingerprint already)
    assert cert.main(["--out", str(out)]) == 0 and "kept the existing certificate" in capsys.readouterr().out
    assert x509.load_pem_x509_certificate((out / "cert.pem").read_bytes()) == made
    # the instructor's own pair is checked and installed; a key that does not match is refused, naming both
    other = cert.self_signed(tmp_path / "other", ["hub.example"])
    assert cert.main(["--out", str(tmp_path / "own"), "--cert", str(other[0]), "--key", str(other[1])]) == 0
    assert other[2] in capsys.readouterr().out and (tmp_path / "own" / "cert.pem").read_bytes() == other[0].read_bytes()
    with pytest.raises(SystemExit, match="is not the key of"):
        cert.main(["--out", str(tmp_path / "mixed"), "--cert", str(other[0]), "--key", str(out / "key.pem")])


# --------------------------------------------------------------------------- idle culling

KERNEL_IDLE_S, SERVER_IDLE_S = 12, 30


@pytest.fixture
def one_participant():
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("the culling test creates a Unix user: run as root (CI does)")
    with rehearsal.room(1) as r:
        yield r


@pytest.mark.slow
def test_idle_kernel_and_server_are_culled_and_files_stay(one_participant):
    """Short timeouts: an idle kernel is shut down by its server (memory returned), then the idle server
    by jupyterhub-idle-culler (no process left); the participant's files stay."""
    import requests

    r = one_participant
    name = next(iter(r["users"]))
    uid = pwd.getpwnam(name).pw_uid
    home = Path(pwd.getpwnam(name).pw_dir)
    with rehearsal.hub(r, WORKSHOP_IDLE_MINUTES=str(KERNEL_IDLE_S / 60),
                       WORKSHOP_SERVER_IDLE_MINUTES=str(SERVER_IDLE_S / 60)) as hub:
        assert rehearsal.login(hub, name, r["users"][name])
        rehearsal.start_servers(hub, [name])
        token = rehearsal.user_token(hub, name)

        async def work():  # a kernel that loads the course's model and holds 256 MiB more, then writes a file
            kernel = await rehearsal.Kernel(hub, name, token).start()
            out = await kernel.run(
                "import os, torch\nfrom ftlab.models import load_model\nmodel, tok = load_model()\n"
                "held = torch.ones(64 * 2**20)\nopen('work.txt', 'w').write('my results')\nprint(os.getpid())", 300)
            await kernel.close(shutdown=False)  # the participant walks away: the kernel stays, idle
            return int(out.split()[-1])

        kernel_pid = asyncio.run(work())
        idle_from = time.time()
        kernel_rss = rehearsal.memory_of([kernel_pid], "Rss")
        before = rehearsal.memory_of(rehearsal.processes_of({uid}), "Rss")
        assert kernel_rss > 256 * 2**20, kernel_rss

        rehearsal.wait_for("the idle kernel to be culled", lambda: not Path(f"/proc/{kernel_pid}").exists(), KERNEL_IDLE_S + 60)
        kernel_culled_s = time.time() - idle_from
        after = rehearsal.memory_of(rehearsal.processes_of({uid}), "Rss")
        server_up = requests.get(f"{hub['base']}/hub/api/users/{name}", headers=hub["admin"], timeout=30,
                                 verify=hub["verify"]).json()["servers"].get("")
        assert server_up, "the server was culled before its kernel: the kernel's own culling did not run"
        assert before - after >= 0.9 * kernel_rss, (before, after, kernel_rss)  # the kernel's memory went with it

        def server_gone():
            user = requests.get(f"{hub['base']}/hub/api/users/{name}", headers=hub["admin"], timeout=30, verify=hub["verify"]).json()
            return not user["servers"] and not rehearsal.processes_of({uid})

        rehearsal.wait_for("the idle server to be culled", server_gone, SERVER_IDLE_S + 90, every=2)
        server_culled_s = time.time() - idle_from
        assert (home / "ftlab-notebooks" / "work.txt").read_text() == "my results"  # files stay
    print(f"\n[culling] kernel culled {kernel_culled_s:.0f} s after going idle (timeout {KERNEL_IDLE_S} s): "
          f"participant's RSS {before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB (kernel held {kernel_rss / 2**20:.0f} MiB); "
          f"server culled {server_culled_s:.0f} s after (timeout {SERVER_IDLE_S} s): no process left")
    assert hub["proc"].returncode == 0


def test_participants_passwords_printed_once_accounts_expire_and_remove(tmp_path, capsys):
    """`add` prints the handout and keeps only the system's hash; the account expires on the given day;
    `remove` (no hub running) deletes account and home."""
    import datetime as dt
    import secrets

    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("creates a Unix user: run as root (CI does)")
    participants = rehearsal.workshop_module("participants")
    prefix, group = f"ftpw{secrets.token_hex(2)}u", f"ftpw{secrets.token_hex(2)}"
    expires = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    tmp_path.chmod(0o755)
    try:
        assert participants.main(["add", "1", "--prefix", prefix, "--group", group, "--home-root", str(tmp_path),
                                  "--expires", expires]) == 0
        out = capsys.readouterr().out
        name = f"{prefix}01"
        password = next(line.split()[1] for line in out.splitlines() if line.startswith(name))
        assert len(password) == 12 and set(password) <= set(participants.ALPHABET) and f"expire after {expires}" in out
        shadow = next(line.split(":") for line in Path("/etc/shadow").read_text().splitlines() if line.startswith(name + ":"))
        assert shadow[1].startswith("$") and password not in shadow[1]  # a hash, not the password
        assert int(shadow[7]) == (dt.date.fromisoformat(expires) - dt.date(1970, 1, 1)).days  # the account's last day
        # nothing under the home or the working folder holds the password in clear
        for path in [*Path(pwd.getpwnam(name).pw_dir).rglob("*"), *Path.cwd().glob("*.tsv")]:
            assert not path.is_file() or password.encode() not in path.read_bytes(), path
        with pytest.raises(SystemExit, match="in the past"):
            participants.add(1, prefix + "x", group, str(tmp_path), "2000-01-01")
        assert participants.main(["remove", "1", "--prefix", prefix]) == 0
        assert "removed " + name in capsys.readouterr().out and not (tmp_path / name).exists()
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--remove", f"{prefix}01"], check=False, timeout=30, capture_output=True)
        subprocess.run(["groupdel", group], check=False, timeout=30, capture_output=True)
