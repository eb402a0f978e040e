"""The hub's proxy, with TLS: the pinned Python ``configurable-http-proxy``, serving https when asked.

JupyterHub starts its proxy with the Node proxy's arguments; with ``c.JupyterHub.ssl_cert``/``ssl_key``
set, that includes ``--ssl-cert FILE --ssl-key FILE``, which the Python port (0.4.0) parses but refuses
("not supported yet"). Its servers are plain tornado ``HTTPServer``s, which take TLS as one argument, so
this wrapper takes those two options off the command line and hands the public server (the one
participants reach) an SSL context. The proxy's REST API stays plain http on 127.0.0.1: only the hub
talks to it, with a token. Everything else is the proxy's own CLI. Started by
``workshop/jupyterhub_config.py`` (``c.ConfigurableHTTPProxy.command``).
"""

from __future__ import annotations

import ssl
import sys

from configurable_http_proxy import cli
from configurable_http_proxy.handlers import ProxyHandler
from tornado.httpserver import HTTPServer


def split_tls(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Remove --ssl-cert/--ssl-key (either ``--opt value`` or ``--opt=value``) from ``argv``."""
    rest, tls, args = [], {}, iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in ("--ssl-cert", "--ssl-key"):
            tls[name[2:]] = value if eq else next(args)
        elif name.startswith("--ssl-"):
            raise SystemExit(f"tls_proxy.py: {name} is not handled here; only --ssl-cert and --ssl-key are.")
        else:
            rest.append(arg)
    if len(tls) == 1:
        raise SystemExit("tls_proxy.py: --ssl-cert and --ssl-key go together.")
    return rest, tls


def main(argv=None) -> None:
    rest, tls = split_tls(sys.argv[1:] if argv is None else argv)
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls["ssl-cert"], tls["ssl-key"])

        def server(app, **kwargs):
            public = any(rule.target is ProxyHandler for rule in app.wildcard_router.rules)
            return HTTPServer(app, ssl_options=context if public else None, **kwargs)

        cli.HTTPServer = server  # the CLI builds its two servers through this name
    cli.main(rest)


if __name__ == "__main__":
    main()
