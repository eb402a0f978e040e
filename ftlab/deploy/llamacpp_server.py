"""``llama_cpp.server``: llama.cpp's OpenAI-compatible server for one GGUF file, run like ``ModelServer``.

The same life cycle as :class:`ftlab.deploy.ModelServer` (a subprocess in its own process group on
127.0.0.1 and a free port, a start-up timeout, SIGTERM then SIGKILL on stop, the log in a file), so the
same ``openai`` client code and the same load test drive both servers. The chat template and the stop
token come from the GGUF file itself (``chat_format`` is left unset, so llama-cpp-python uses the
file's ``tokenizer.chat_template`` and stops at its end-of-sequence token). Requests are answered one
at a time (one model context): extra clients queue, as with ``transformers serve`` without batching.
llama_cpp.server answers a malformed body (``messages`` not a list...) with 500, so ``python -m
ftlab.deploy.llamacpp_server`` runs its app with the same request check as ``ftlab.deploy.launch`` puts in
front of transformers serve: 400 with a reason, before any model code runs.
One difference to know: its default ``repeat_penalty`` is 1.1, so "temperature 0" is not greedy decoding
unless the request sets ``repeat_penalty`` to 1.0 (``extra_body``; :attr:`LlamaCppServer.extra_body`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ftlab.deploy.serving import LOCALHOST, ModelServer


class LlamaCppServer(ModelServer):
    """``python -m llama_cpp.server`` for one GGUF file, bound to 127.0.0.1.

    Args:
        gguf_path: the ``.gguf`` file to serve.
        n_ctx: context length of the server's model context.
        threads: llama.cpp threads (default: the number of CPU cores).
        n_gpu_layers: layers on the GPU of a CUDA build (-1: all); 0 on the CPU.
        port, startup_timeout, log_path, strict_port: as for ``ModelServer``.
    """

    health_path = "/v1/models"   # llama_cpp.server has no /health

    def __init__(self, gguf_path, *, n_ctx: int = 2048, threads: int | None = None, n_gpu_layers: int = 0,
                 port: int | None = None,
                 host: str = "127.0.0.1", startup_timeout: float = 120.0, log_path=None, strict_port: bool = False):
        from ftlab.deploy.llamacpp import require_llama_cpp

        require_llama_cpp()
        if host not in LOCALHOST:
            raise ValueError(f"LlamaCppServer: host {host!r} would expose a server without authentication; "
                             "ftlab binds 127.0.0.1 only (put a reverse proxy with API keys and TLS in front).")
        self.gguf_path = Path(gguf_path).resolve()
        if not self.gguf_path.is_file():
            raise FileNotFoundError(f"LlamaCppServer: {self.gguf_path} is not a file. Fix: pass an exported .gguf file.")
        self.model_dir = self.gguf_path.parent
        self.host, self.requested_port, self.strict_port = "127.0.0.1", port, strict_port
        self.n_ctx, self.threads, self.startup_timeout = n_ctx, threads, startup_timeout
        self.n_gpu_layers = n_gpu_layers
        self.log_path = Path(log_path) if log_path else self.model_dir / f"llama-server-{self.gguf_path.stem}.log"
        self.port = self.process = self.startup_seconds = None
        # llama_cpp.server applies repeat_penalty=1.1 unless a request says otherwise: even at temperature 0 the
        # answer is then not the greedy one. Clients built by ftlab send 1.0 (no penalty), as transformers does.
        self.extra_body = {"repeat_penalty": 1.0}

    @property
    def model(self) -> str:
        return self.gguf_path.stem  # the alias the server answers to

    def _command(self) -> list[str]:
        from ftlab.deploy.llamacpp import default_threads

        return [sys.executable, "-m", "ftlab.deploy.llamacpp_server", "--model", str(self.gguf_path),
                "--model_alias", self.model,
                "--host", self.host, "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_gpu_layers", str(self.n_gpu_layers),
                "--n_threads", str(self.threads or default_threads())]


def main(argv=None) -> None:
    """``python -m ftlab.deploy.llamacpp_server --model F.gguf --port N ...``: llama_cpp.server's app, guarded."""
    import argparse
    import os

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from ftlab.deploy.launch import _exit_with_parent, add_chat_guard

    p = argparse.ArgumentParser(prog="python -m ftlab.deploy.llamacpp_server")
    for name, kind in (("--model", str), ("--model_alias", str), ("--host", str), ("--port", int), ("--n_ctx", int),
                       ("--n_gpu_layers", int), ("--n_threads", int)):
        p.add_argument(name, type=kind, required=True)
    args = p.parse_args(argv)
    if args.host not in LOCALHOST:
        raise SystemExit(f"refusing to bind {args.host}: the server has no authentication")
    if os.environ.get("FTLAB_PARENT_PID", "").isdigit():
        _exit_with_parent(int(os.environ["FTLAB_PARENT_PID"]))
    # interrupt_requests=False: by default a new request aborts the one being streamed, so concurrent clients
    # would cut each other off; we want them to queue.
    app = create_app(server_settings=ServerSettings(host=args.host, port=args.port, interrupt_requests=False),
                     model_settings=[ModelSettings(model=args.model, model_alias=args.model_alias, n_ctx=args.n_ctx,
                                                   n_gpu_layers=args.n_gpu_layers, n_threads=args.n_threads,
                                                   n_threads_batch=args.n_threads,  # else every core (open_gguf)
                                                   verbose=False)])
    add_chat_guard(app)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
