"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for the LM judge's tests.

It answers `GET /v1/models` with `models` and `POST /v1/chat/completions` with `reply(prompt)`, by default the way the judge's prompt asks: a
rating from 1 to 5 of the pair at the end of the prompt (5 when predicted and expected are the same text, else 1 plus the number of
shared words, at most 4). It records every request (path and body), counts every answered prompt, and injects faults: a queue
consumed one per request (`401`, `429`, `500`, `502`, `timeout`: answer after the client gave up, `garbage`: a reply
that is not a rating), and per predicted text a fault on every request for it (`always`).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def rating(prompt: str) -> int:
    predicted = re.findall(r"^Predicted: (.*)$", prompt, re.M)[-1].strip()
    expected = re.findall(r"^Expected: (.*)$", prompt, re.M)[-1].strip()
    if predicted == expected:
        return 5
    return 1 + min(3, len(set(predicted.lower().split()) & set(expected.lower().split())))


class ChatServer:
    def __init__(self, slow_seconds: float = 2.0, reply=rating, models=("judge-test",)):
        self.reply = reply
        self.models = list(models)  # what GET /v1/models lists
        self.listed = 0  # models lists answered
        self.bodies: list[dict] = []  # {"path", "body"} of every request
        self.faults: list[str] = []
        self.always: dict[str, str] = {}  # predicted text -> fault on every request for it
        self.requests = 0
        self.answered: Counter = Counter()  # prompt -> replies with a rating sent
        self.headers: list[dict] = []
        self.slow_seconds = slow_seconds
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # the models list (llm.check_server asks it before a run)
                with server._lock:
                    server.listed += 1
                models = [{"id": name, "object": "model", "created": 0, "owned_by": "test"} for name in server.models]
                payload = json.dumps({"object": "list", "data": models}).encode()
                self.send_response(200 if self.path.rstrip("/").endswith("/models") else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with server._lock:
                    server.requests += 1
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.bodies.append({"path": self.path, "body": body})
                    fault = server.faults.pop(0) if server.faults else None
                    predicted = re.findall(r"^Predicted: (.*)$", prompt, re.M)
                    fault = server.always.get(predicted[-1].strip() if predicted else "", fault)
                if fault in ("401", "429", "500", "502"):
                    payload = json.dumps({"error": {"message": f"injected {fault}", "type": "test"}}).encode()
                    self.send_response(int(fault))
                    if fault == "429":
                        self.send_header("Retry-After", "0.2")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "timeout":
                    time.sleep(server.slow_seconds)
                content = "I would say it is fairly similar" if fault == "garbage" else str(server.reply(prompt))
                if fault != "garbage" and fault != "timeout":
                    with server._lock:
                        server.answered[prompt] += 1
                payload = json.dumps({
                    "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 1,
                              "total_tokens": len(prompt.split()) + 1}}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "ChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
