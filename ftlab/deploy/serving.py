"""Serve a merged model with ``transformers serve`` and call it like any OpenAI API.

``ModelServer`` starts transformers' OpenAI-compatible server as a subprocess (through
:mod:`ftlab.deploy.launch`, which adds a request check), on 127.0.0.1 and a free port, offline
(``HF_HUB_OFFLINE=1``), waits for ``GET /health`` with a timeout, and stops it cleanly, so no process
is left behind even if a notebook cell fails (use it as a context manager).

Why localhost only: the server has **no authentication**. Anyone who can reach the port can use
the model (and the machine's compute). A shared server belongs behind a reverse proxy (nginx,
Caddy, an API gateway) that terminates TLS, checks an API key per user, and rate-limits.

Clients use the official ``openai`` package: :func:`chat_completion` sends one request (streamed or
not, greedy by default, the course system prompt first) and returns the text with its timings.
Every wait has a timeout; a server that dies mid-request raises :class:`ServerError` in the client.

Example:
    >>> with ModelServer("runs/merged") as server:                        # doctest: +SKIP
    ...     print(chat_completion(server.client(), server.model, "Hi")["text"])
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

LOCALHOST = ("127.0.0.1", "localhost")
# Continuous batching sizes for a CPU. transformers sizes the paged KV cache from free *GPU* memory;
# on a CPU its defaults (8192 tokens per batch) make every step build a huge attention mask, so a
# 15-token answer takes tens of seconds. A small cache and batch keep each step cheap.
CPU_CB_NUM_BLOCKS = 16  # blocks of 256 tokens for all layers: 4096 cached tokens
CPU_CB_MAX_BATCH_TOKENS = 256


class ServerError(RuntimeError):
    """The model server failed to start, or stopped answering."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on ``host:port`` (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (bind to port 0 and read what we got)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ModelServer:
    """``transformers serve`` for one model folder, as a subprocess bound to 127.0.0.1.

    Args:
        model_dir: a folder ``from_pretrained`` loads (e.g. written by ``merge_and_save``).
        port: the port to use; ``None`` picks a free one. A port already in use is replaced by a
            free one (with a message), unless ``strict_port=True``, which raises instead.
        continuous_batching: transformers' paged-attention scheduler: requests join and leave a
            running batch at every step, instead of waiting for each other.
        device, dtype: where and how the server loads the model (``cpu``/``float32`` on a laptop).
        startup_timeout: seconds to wait for ``/health`` before giving up (and killing the process).
        log_path: the server's stdout/stderr (default: a file next to the model folder).
        threads: torch CPU threads of the server (``OMP_NUM_THREADS``); None keeps torch's default. On a
            CPU shared with other work, 1 thread avoids threads spinning while they wait for each other.
    """

    health_path = "/health"   # the GET that answers 200 once the model is loaded

    def __init__(self, model_dir, *, port: int | None = None, host: str = "127.0.0.1",
                 continuous_batching: bool = False, device: str = "cpu", dtype: str = "float32",
                 startup_timeout: float = 180.0, log_path=None, strict_port: bool = False,
                 cb_num_blocks: int | None = CPU_CB_NUM_BLOCKS, cb_max_batch_tokens: int | None = CPU_CB_MAX_BATCH_TOKENS,
                 threads: int | None = None):
        if host not in LOCALHOST:
            raise ValueError(
                f"ModelServer: host {host!r} would expose a server without authentication. ftlab binds 127.0.0.1 only; "
                "to share a model, put a reverse proxy with API keys and TLS in front of a localhost server."
            )
        self.model_dir = Path(model_dir).resolve()
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"ModelServer: {self.model_dir} has no config.json. Fix: pass a merge_and_save() folder.")
        if "@" in str(self.model_dir) or ":" in str(self.model_dir):
            raise ValueError(f"ModelServer: {self.model_dir}: transformers serve reads '@' and ':' in a model name as "
                             "revision / GGUF file. Fix: use a folder path without them.")
        self.host, self.requested_port, self.strict_port = "127.0.0.1", port, strict_port
        self.continuous_batching, self.device, self.dtype = continuous_batching, device, dtype
        self.cb_num_blocks, self.cb_max_batch_tokens = cb_num_blocks, cb_max_batch_tokens
        self.startup_timeout, self.threads = startup_timeout, threads
        self.log_path = Path(log_path) if log_path else self.model_dir.parent / f"serve-{self.model_dir.name}.log"
        self.port: int | None = None
        self.extra_body: dict | None = None  # request fields every client should send (none for transformers)
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    # ----------------------------------------------------------------------- names

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def model(self) -> str:
        """The model name clients send: the server is pinned to this folder."""
        return str(self.model_dir)

    def client(self, timeout: float = 120.0):
        """An ``openai.OpenAI`` client for this server. No retries: a failure shows at once."""
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key="unused-localhost-has-no-auth", timeout=timeout,
                      max_retries=0)

    # ----------------------------------------------------------------------- start / stop

    def _pick_port(self) -> int:
        port = self.requested_port
        if port is None:
            return free_port(self.host)
        if port_is_free(port, self.host):
            return port
        if self.strict_port:
            raise ServerError(f"ModelServer: port {port} on {self.host} is already in use. Fix: pass another port, "
                              "or port=None to pick a free one.")
        new = free_port(self.host)
        print(f"[ftlab] port {port} is in use; serving on {new} instead")
        return new

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "ftlab.deploy.launch", self.model, "--host", self.host, "--port", str(self.port),
               "--device", self.device, "--dtype", self.dtype, "--log-level", "warning"]
        if self.continuous_batching:
            cmd.append("--continuous-batching")
            if self.cb_num_blocks:
                cmd += ["--cb-num-blocks", str(self.cb_num_blocks)]
            if self.cb_max_batch_tokens:
                cmd += ["--cb-max-batch-tokens", str(self.cb_max_batch_tokens)]
        return cmd

    def start(self) -> "ModelServer":
        """Start the server and wait until ``/health`` answers 200 (or raise ``ServerError``)."""
        if self.alive:
            return self
        for attempt in range(3):  # another program may take the free port between our check and the bind
            self.port = self._pick_port()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                   "FTLAB_PARENT_PID": str(os.getpid()),  # the server exits if we die without stopping it
                   "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[2]),
                                                            os.environ.get("PYTHONPATH", "")] if p)}
            if self.threads:
                env["OMP_NUM_THREADS"] = str(self.threads)
            start = time.perf_counter()
            with open(self.log_path, "w") as log:
                self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                self._wait_healthy()
                self.startup_seconds = time.perf_counter() - start
                return self
            except ServerError:
                tail = self.log_tail()
                self.stop()
                if "address already in use" in tail.lower() and self.requested_port is None and attempt < 2:
                    continue
                raise
        raise ServerError("ModelServer: no free port after 3 tries")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"the server exited with code {self.process.returncode} while starting. "
                                  f"Log ({self.log_path}):\n{self.log_tail()}")
            if self.health() == 200:
                return
            time.sleep(0.3)
        raise ServerError(f"the server did not answer {self.health_path} within {self.startup_timeout:.0f} s. "
                          f"Log ({self.log_path}):\n{self.log_tail()}")

    def health(self, timeout: float = 2.0) -> int | None:
        """The HTTP status of ``GET {health_path}`` (200 = ready), or None if nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}{self.health_path}", timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop the server: SIGTERM (uvicorn shuts down cleanly), then SIGKILL after ``timeout`` s.

        The server runs in its own process group, so the signal reaches it and anything it started.
        Returns its exit code.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        return self.process.returncode

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would: for testing what clients see."""
        if self.alive:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __del__(self):  # a forgotten server must not outlive the notebook kernel
        try:
            self.stop(timeout=5)
        except Exception:
            pass


# --------------------------------------------------------------------------- client


def _messages(prompt, system):
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    return messages


def chat_completion(client, model: str, prompt, *, system: str | None = None, max_tokens: int = 64,
                    stream: bool = False, temperature: float = 0.0, server: ModelServer | None = None,
                    extra_body: dict | None = None) -> dict:
    """One chat request through the ``openai`` client. Greedy (``temperature=0``) by default.

    ``extra_body``: server-specific request fields (default: ``server.extra_body`` if a server is given).
    Returns ``{"text", "completion_tokens", "finish_reason", "latency_s", "ttft_s", "stream"}``;
    ``ttft_s`` (time to first token) is measured on streamed requests only (None otherwise).
    Raises :class:`ServerError` when the server cannot be reached or stops mid-answer (``server``,
    if given, adds its exit code and log to the message).
    """
    import openai

    extra_body = extra_body if extra_body is not None else getattr(server, "extra_body", None)
    kwargs = dict(model=model, messages=_messages(prompt, system), max_tokens=max_tokens, temperature=temperature)
    if extra_body:  # fields outside OpenAI's schema that a server reads (llama_cpp.server: repeat_penalty)
        kwargs["extra_body"] = extra_body
    start = time.perf_counter()
    try:
        if not stream:
            r = client.chat.completions.create(**kwargs)
            return {"text": r.choices[0].message.content or "", "completion_tokens": r.usage.completion_tokens,
                    "finish_reason": r.choices[0].finish_reason, "latency_s": time.perf_counter() - start,
                    "ttft_s": None, "stream": False}
        parts, ttft, tokens, finish, chunks = [], None, None, None, 0
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if getattr(chunk, "error", None):
                raise ServerError(f"the server reported an error mid-stream: {chunk.error}")
            if chunk.choices:
                delta = chunk.choices[0].delta.content
                if delta:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    parts.append(delta)
                    chunks += 1
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        if finish is None:
            raise ServerError("the stream ended without a finish_reason: the server stopped mid-answer")
        # llama_cpp.server sends no usage when streaming; both servers stream one chunk per generated token
        tokens = chunks if tokens is None else tokens
        return {"text": "".join(parts), "completion_tokens": tokens, "finish_reason": finish,
                "latency_s": time.perf_counter() - start, "ttft_s": ttft, "stream": True}
    except (openai.APIConnectionError, openai.APITimeoutError, ServerError) as e:
        where = ""
        if server is not None:
            try:  # a crash is seen by the client a moment before the process is reaped
                server.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
            state = "running" if server.alive else f"exited with code {server.process.returncode}"
            where = f" Server process: {state}. Log tail:\n{server.log_tail(8)}"
        raise ServerError(f"chat_completion: no complete answer from {getattr(client, 'base_url', '?')} "
                          f"({type(e).__name__}: {e}).{where}") from e


def post_json(url: str, body, timeout: float = 30.0) -> tuple[int, dict | str]:
    """POST raw JSON (or a raw string) and return ``(status, parsed body)``: for testing bad requests."""
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read().decode()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw
