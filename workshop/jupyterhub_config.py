"""JupyterHub for an ftlab workshop: N participants on one machine (a DGX Spark, or any Linux box).

    sudo .venv/bin/jupyterhub -f workshop/jupyterhub_config.py        (or: sudo make workshop)

What it sets up (docs/workshop.md has the recipe and the instructor's cheat sheet):

* **Log-in**: PAM, i.e. the machine's own accounts. Participants are local Unix users made by
  ``workshop/participants.py add`` (random passwords printed once, accounts that expire) and only members of the
  group ``$WORKSHOP_GROUP`` may log in; ``$WORKSHOP_ADMINS`` (the instructors) get the admin page.
* **Separation by the operating system**: every participant's JupyterLab runs as their own Unix
  user (LocalProcessSpawner), in their own 0700 home, with their own copy of the notebooks. The hub
  runs as root only to switch users; nobody can read another's files or reach their server (the
  hub's OAuth lets each user into /user/<own name>/ only).
* **The course environment**: ``FTLAB_PROFILE``, the shared read-only model cache ``FTLAB_HOME``
  (the spawner refuses to start a server when it is missing or unreadable, and names the fix),
  ``HF_HUB_OFFLINE=1``.
* **Memory**: ``FTLAB_MEMORY_BUDGET_GIB`` per participant (``ftlab.budget`` checks every training
  and generation run against it; on CUDA it is enforced with ``set_per_process_memory_fraction``),
  and a hard per-process limit (``RLIMIT_AS``, CPU machines) so one runaway kernel fails alone. When
  budget x participants is more than the machine, the hub prints a warning with the numbers.
* **Network**: binds 127.0.0.1 unless ``WORKSHOP_IP`` says otherwise. Off the loopback interface the
  hub serves https only: it refuses to start without a certificate (``make workshop-cert`` makes a
  self-signed one, or installs the instructor's own, in ``$WORKSHOP_STATE/tls``). Participants type
  their Unix passwords into the login form: they must never cross the room's Wi-Fi in clear text.
* **Idle culling**: a kernel idle for ``WORKSHOP_IDLE_MINUTES`` is shut down by its server (even with
  the tab open), and ``jupyterhub-idle-culler`` stops a server nobody used for that long (tab closed,
  participant gone). Files stay; the next Run of a training cell resumes from its last checkpoint.

Every setting comes from an environment variable with a default (see ``setting`` below).
"""

import ipaddress
import os
import pwd
import socket
import resource
import shutil
import sys
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner

c = get_config()  # noqa: F821  (JupyterHub provides it)

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # the hub runs from the course's venv; so do the servers
sys.path.insert(0, str(REPO))
from ftlab.workshop import model_cache_problem, room_warning  # noqa: E402  (light: no torch)


def setting(name, default):
    return os.environ.get(name) or default


PARTICIPANTS = int(setting("WORKSHOP_PARTICIPANTS", "12"))
PROFILE = setting("FTLAB_PROFILE", "gpu" if shutil.which("nvidia-smi") else "laptop")
FTLAB_HOME = Path(setting("FTLAB_HOME", "/opt/ftlab"))
STATE = Path(setting("WORKSHOP_STATE", "/var/lib/ftlab-workshop"))
GROUP = setting("WORKSHOP_GROUP", "ftlab")
GiB = 2**30


def machine_gib() -> float:
    """Memory the participants share: $WORKSHOP_MACHINE_GIB, else 85 % of this machine's RAM."""
    if os.environ.get("WORKSHOP_MACHINE_GIB"):
        return float(os.environ["WORKSHOP_MACHINE_GIB"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.85 / GiB


BUDGET_GIB = float(setting("FTLAB_MEMORY_BUDGET_GIB", f"{int(machine_gib() / PARTICIPANTS * 2) / 2:g}"))
# RLIMIT_AS caps *address space*, which is larger than resident memory: torch and its libraries
# map ~2-3 GiB they never touch. Hence the headroom over the budget.
MEM_LIMIT_GIB = float(setting("WORKSHOP_MEM_LIMIT_GIB", str(BUDGET_GIB + 4)))
# On CUDA machines RLIMIT_AS would break CUDA (it reserves huge address ranges): there the budget is
# enforced by ftlab.budget (set_per_process_memory_fraction); use SystemdSpawner's mem_limit for a
# cgroup limit on host memory (docs/workshop.md).
RLIMIT = setting("WORKSHOP_RLIMIT_AS", "0" if shutil.which("nvidia-smi") else "1") == "1"

warning = room_warning(BUDGET_GIB, PARTICIPANTS, machine_gib())
if warning:
    print(f"[ftlab workshop] {warning}", file=sys.stderr, flush=True)

# ---------------------------------------------------------------- hub, proxy, state
STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
IP = setting("WORKSHOP_IP", "127.0.0.1")
CERT = Path(setting("WORKSHOP_SSL_CERT", str(STATE / "tls" / "cert.pem")))
KEY = Path(setting("WORKSHOP_SSL_KEY", str(STATE / "tls" / "key.pem")))


def loopback_only(host: str) -> bool:
    """True when ``host`` is reachable from this machine alone (\"\" and 0.0.0.0 mean every interface)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host or None, None, flags=socket.AI_PASSIVE)}
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


if CERT.is_file() and KEY.is_file():
    c.JupyterHub.ssl_cert, c.JupyterHub.ssl_key = str(CERT), str(KEY)
elif not loopback_only(IP):
    # A config file cannot return an error code; SystemExit passes through traitlets' loader.
    print(f"[ftlab workshop] refusing to listen on {IP or 'every interface'} without TLS: participants' passwords "
          f"would cross the room's network in clear text. No certificate at {CERT} / {KEY}.\n"
          f"Fix: sudo make workshop-cert   (self-signed for this machine; prints the fingerprint to show the room)\n"
          f"  or sudo make workshop-cert CERT=/path/cert.pem KEY=/path/key.pem   (your own certificate)\n"
          f"  or WORKSHOP_SSL_CERT=... WORKSHOP_SSL_KEY=...; or WORKSHOP_IP=127.0.0.1 for a rehearsal on this machine.",
          file=sys.stderr, flush=True)
    raise SystemExit(2)
c.JupyterHub.ip = IP
c.JupyterHub.port = int(setting("WORKSHOP_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(setting("WORKSHOP_HUB_PORT", "8081"))
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(STATE / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every participant's server
c.JupyterHub.cleanup_proxy = True
# The proxy: the Python port of configurable-http-proxy (PyPI, pinned in the `workshop` extra), started
# through workshop/tls_proxy.py, which adds the https its CLI does not do yet.
c.ConfigurableHTTPProxy.command = [sys.executable, str(REPO / "workshop" / "tls_proxy.py")]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{setting('WORKSHOP_PROXY_API_PORT', c.JupyterHub.port + 1)}"
c.ConfigurableHTTPProxy.pid_file = str(STATE / "proxy.pid")

# ---------------------------------------------------------------- who may log in
c.JupyterHub.authenticator_class = "pam"
c.Authenticator.allowed_groups = {GROUP}
c.Authenticator.admin_users = {u for u in setting("WORKSHOP_ADMINS", "").split(",") if u}
c.PAMAuthenticator.open_sessions = False  # no systemd-logind sessions in containers; not needed
c.JupyterHub.services, c.JupyterHub.load_roles = [], []
# An API token for the instructor's scripts (and the rehearsal test): manage servers, read users.
if os.environ.get("WORKSHOP_API_TOKEN"):
    c.JupyterHub.services.append({"name": "instructor", "api_token": os.environ["WORKSHOP_API_TOKEN"]})
    c.JupyterHub.load_roles.append({"name": "instructor", "services": ["instructor"],
                                    "scopes": ["admin:users", "admin:servers", "tokens", "list:users"]})

# ---------------------------------------------------------------- idle culling
# A kernel idle this long is shut down by its own server, also while the participant's tab is open
# (cull_connected): that is the 7 GB kernel left at lunch. A whole server unused this long (the tab
# closed, the participant gone) is stopped by jupyterhub-idle-culler. Files stay in the home; the next
# Run of a training cell with resume_from="latest" continues from its last checkpoint.
KERNEL_IDLE_S = round(float(setting("WORKSHOP_IDLE_MINUTES", "30")) * 60)
SERVER_IDLE_S = round(float(setting("WORKSHOP_SERVER_IDLE_MINUTES", str(2 * KERNEL_IDLE_S / 60))) * 60)
# How often both look (and how often servers report activity to the hub): a tenth of the kernel's
# timeout, at most a minute, so a kernel is culled at most 10 % after its time.
CULL_EVERY_S = max(1, min(60, KERNEL_IDLE_S // 10))
c.JupyterHub.last_activity_interval = CULL_EVERY_S
c.JupyterHub.services.append({
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={SERVER_IDLE_S}",
                f"--cull-every={CULL_EVERY_S}"],
})
c.JupyterHub.load_roles.append({"name": "idle-culler", "services": ["idle-culler"],
                                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]})


# ---------------------------------------------------------------- one JupyterLab per participant
class WorkshopSpawner(LocalProcessSpawner):
    """LocalProcessSpawner + the course: model-cache check, own notebook copy, memory limit."""

    async def start(self):
        problem = model_cache_problem(FTLAB_HOME)
        if problem:  # shown to the participant on the spawn page, and in the hub log
            raise RuntimeError(f"The course's model cache is not ready: {problem} "
                               f"Fix (instructor, once): sudo FTLAB_HOME={FTLAB_HOME} {VENV_BIN}/ftlab prefetch "
                               f"&& sudo chmod -R a+rX {FTLAB_HOME}")
        self._copy_notebooks()
        return await super().start()

    def _copy_notebooks(self):
        """First start: the participant's own copy of the notebooks, owned by them, in a 0700 home."""
        user = pwd.getpwnam(self.user.name)
        home = Path(user.pw_dir)
        os.chmod(home, 0o700)
        dest = home / "ftlab-notebooks"
        if dest.exists():
            return
        shutil.copytree(REPO / "notebooks", dest)
        for path in [dest, *dest.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)

    def make_preexec_fn(self, name):
        drop_privileges = super().make_preexec_fn(name)
        limit = int(MEM_LIMIT_GIB * GiB) if RLIMIT else None

        def preexec():
            if limit:  # inherited by the server and every kernel it starts
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            drop_privileges()

        return preexec


c.JupyterHub.spawner_class = WorkshopSpawner
c.Spawner.cmd = [str(VENV_BIN / "jupyterhub-singleuser")]
c.Spawner.args = [f"--MappingKernelManager.cull_idle_timeout={KERNEL_IDLE_S}",
                  f"--MappingKernelManager.cull_interval={CULL_EVERY_S}",
                  "--MappingKernelManager.cull_connected=True"]
c.Spawner.notebook_dir = "~/ftlab-notebooks"
c.Spawner.default_url = "/lab"
c.Spawner.mem_limit = f"{int(MEM_LIMIT_GIB * 1024)}M"  # also exported to the server as MEM_LIMIT
c.Spawner.start_timeout = int(setting("WORKSHOP_START_TIMEOUT", "120"))
c.Spawner.http_timeout = int(setting("WORKSHOP_START_TIMEOUT", "120"))
c.Spawner.environment = {
    "FTLAB_PROFILE": PROFILE,
    "FTLAB_HOME": str(FTLAB_HOME),
    "FTLAB_MEMORY_BUDGET_GIB": f"{BUDGET_GIB:g}",
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": str(REPO),
    "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
    "MALLOC_ARENA_MAX": "2",  # fewer glibc heaps: less address space and less retained memory per kernel
    "TOKENIZERS_PARALLELISM": "false",
    "JUPYTERHUB_ACTIVITY_INTERVAL": str(CULL_EVERY_S),  # the server tells the hub it was used, this often
}
