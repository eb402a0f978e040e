"""JupyterHub for an ftlab workshop: N participants on one machine (a DGX Spark, or any Linux box).

    sudo .venv/bin/jupyterhub -f workshop/jupyterhub_config.py        (or: sudo make workshop)

What it sets up (docs/workshop.md has the recipe and the instructor's cheat sheet):

* **Log-in**: PAM, i.e. the machine's own accounts. Participants are local Unix users made by
  ``workshop/participants.py add`` (random passwords, one printed sheet) and only members of the
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
* **Network**: binds 127.0.0.1 unless ``WORKSHOP_IP`` says otherwise; put TLS in front for a room.

Every setting comes from an environment variable with a default (see ``setting`` below).
"""

import os
import pwd
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
c.JupyterHub.ip = setting("WORKSHOP_IP", "127.0.0.1")
c.JupyterHub.port = int(setting("WORKSHOP_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(setting("WORKSHOP_HUB_PORT", "8081"))
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(STATE / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every participant's server
c.JupyterHub.cleanup_proxy = True
# The proxy: the Python port of configurable-http-proxy (PyPI, pinned in the `workshop` extra).
c.ConfigurableHTTPProxy.command = [str(VENV_BIN / "configurable-http-proxy")]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{setting('WORKSHOP_PROXY_API_PORT', c.JupyterHub.port + 1)}"
c.ConfigurableHTTPProxy.pid_file = str(STATE / "proxy.pid")

# ---------------------------------------------------------------- who may log in
c.JupyterHub.authenticator_class = "pam"
c.Authenticator.allowed_groups = {GROUP}
c.Authenticator.admin_users = {u for u in setting("WORKSHOP_ADMINS", "").split(",") if u}
c.PAMAuthenticator.open_sessions = False  # no systemd-logind sessions in containers; not needed
# An API token for the instructor's scripts (and the rehearsal test): manage servers, read users.
if os.environ.get("WORKSHOP_API_TOKEN"):
    c.JupyterHub.services = [{"name": "instructor", "api_token": os.environ["WORKSHOP_API_TOKEN"]}]
    c.JupyterHub.load_roles = [{"name": "instructor", "services": ["instructor"],
                                "scopes": ["admin:users", "admin:servers", "tokens", "list:users"]}]


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
}
