"""A participant's Jupyter kernel driven over the hub, as JupyterLab drives it: started through the
server's REST API, code sent over the kernel's websocket (wss, trusting the room's certificate only).
Used by the workshop rehearsal (``ftlab.bench.rehearsal``) and its CI test.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid


class Kernel:
    """A kernel in a participant's server, driven over its websocket (wss, the room's certificate)."""

    def __init__(self, info, user, token):
        self.info, self.user, self.headers = info, user, {"Authorization": f"token {token}"}
        self.session, self.id, self.ws = uuid.uuid4().hex, None, None

    async def start(self, path=""):
        import requests
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.websocket import websocket_connect

        r = await asyncio.to_thread(requests.post, f"{self.info['base']}/user/{self.user}/api/kernels", headers=self.headers,
                                    json={"name": "python3", "path": path}, timeout=60, verify=self.info["verify"])
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]
        url = f"{self.info['base'].replace('https', 'wss')}/user/{self.user}/api/kernels/{self.id}/channels"
        # Three tries, as JupyterLab reconnects a kernel's websocket: on a loaded machine the proxy can drop the
        # first upgrade (tornado reports it as HTTP 599); a refused token or a missing kernel fails at once.
        for attempt in range(3):
            try:
                self.ws = await websocket_connect(HTTPRequest(url, headers=self.headers, connect_timeout=30,
                                                              request_timeout=60, ca_certs=self.info["verify"]))
                return self
            except HTTPClientError as e:
                if e.code != 599 or attempt == 2:
                    raise
                await asyncio.sleep(2)

    async def run(self, code, timeout):
        """Execute ``code``; return its printed output; raise AssertionError if it fails.

        Done when both the reply (shell channel) and the kernel's "idle" for this request (iopub, after
        all output) have come: the websocket carries both channels, and the reply may come first."""
        msg_id, out, start, replied, idle = uuid.uuid4().hex, [], time.time(), False, False
        await self.ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": self.user, "session": self.session, "msg_type": "execute_request",
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        while True:
            left = max(1, timeout - (time.time() - start))
            try:  # once replied, the idle status follows at once; wait for it 30 s at most
                raw = await asyncio.wait_for(self.ws.read_message(), timeout=min(left, 30) if replied else left)
            except asyncio.TimeoutError:
                if replied:
                    return "".join(out)
                raise TimeoutError(f"{self.user}: no reply from the kernel within {timeout:.0f} s") from None
            assert raw is not None, f"{self.user}: kernel websocket closed"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            if msg["msg_type"] == "error":
                raise AssertionError(f"{self.user}: {msg['content']['ename']}: {msg['content']['evalue']}")
            if msg["msg_type"] == "execute_reply":
                assert msg["content"]["status"] == "ok", f"{self.user}: {msg['content']}"
                replied = True
            idle = idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
            if replied and idle:
                return "".join(out)

    async def close(self, shutdown=True):
        import requests

        if self.ws:
            self.ws.close()
        if shutdown and self.id:
            await asyncio.to_thread(requests.delete, f"{self.info['base']}/user/{self.user}/api/kernels/{self.id}",
                                    headers=self.headers, timeout=60, verify=self.info["verify"])
