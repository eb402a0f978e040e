"""``python -m ftlab.deploy.launch <transformers serve arguments>``: ``transformers serve`` with one guard.

This is transformers' own server (its CLI, its FastAPI app, its generation managers), run exactly as
``transformers serve`` runs it, plus a check of the request body in front of
``/v1/chat/completions``. Why: in transformers 5.23 a body without ``messages``, or with
``messages`` that is not a list of ``{"role", "content"}`` objects, reaches the handler and fails
there as an HTTP 500 (a ``KeyError``/``TypeError``). A client error should be a 4xx that says what is
wrong, so the guard answers those with 400 and a message before any model code runs. Everything
else (bad JSON, unknown fields, a wrong model name) transformers already answers with 4xx itself.

It also skips the CLI's update check, which would try to reach PyPI, and exits when the process
that started it is gone (``FTLAB_PARENT_PID``): a notebook kernel that is killed, not shut down,
leaves no server behind.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

ROLES = ("system", "user", "assistant", "tool", "developer")


def chat_request_problem(body) -> str | None:
    """What is wrong with a chat-completions body, or ``None`` if its ``messages`` are well formed."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {'role': ..., 'content': ...} objects"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}] must be an object with 'role' and 'content', got {type(m).__name__}"
        if m.get("role") not in ROLES:
            return f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.get('role')!r}"
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            return f"messages[{i}].content must be a string or a list of content parts"
        if isinstance(content, list) and not all(isinstance(p, dict) and "type" in p for p in content):
            return f"messages[{i}].content parts must be objects with a 'type'"
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"'{key}' must be a positive integer, got {value!r}"
    return None


def add_chat_guard(app) -> None:
    """Answer malformed ``/v1/chat/completions`` bodies of a FastAPI ``app`` with 400 before its handler runs.

    Used for both servers: transformers serve, and llama_cpp.server (which answers them with 500).
    """
    from fastapi.responses import JSONResponse

    @app.middleware("http")
    async def check_chat_body(request, call_next):
        if request.method == "POST" and request.url.path == "/v1/chat/completions":
            try:
                body = json.loads(await request.body())
            except ValueError as e:
                return JSONResponse({"error": {"message": f"invalid JSON: {e}", "type": "invalid_request_error"}},
                                    status_code=400)
            problem = chat_request_problem(body)
            if problem:
                return JSONResponse({"error": {"message": problem, "type": "invalid_request_error"}},
                                    status_code=400)
        return await call_next(request)


def _install_guard() -> None:
    """Wrap transformers' app factory so every app it builds checks chat bodies first."""
    from transformers.cli.serving import server

    build_server = server.build_server

    def build_guarded_server(*args, **kwargs):
        app = build_server(*args, **kwargs)
        add_chat_guard(app)
        return app

    server.build_server = build_guarded_server


def _exit_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """Exit this server as soon as ``parent_pid`` is no longer our parent (it died; we were re-parented)."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="ftlab-parent-watch").start()


def main(argv=None) -> None:
    from transformers.cli.transformers import app

    if os.environ.get("FTLAB_PARENT_PID", "").isdigit():
        _exit_with_parent(int(os.environ["FTLAB_PARENT_PID"]))
    _install_guard()
    sys.argv = ["transformers", "serve", *(sys.argv[1:] if argv is None else argv)]
    app()


if __name__ == "__main__":
    main()
