"""A webhook receiver for bwmon's tests, on loopback.

Usage: webhook_server.py PORT DIR [SECRET_FILE]

How it answers is read from DIR/mode at every request: "ok" (200), "fail" (500) or "hang"
(no answer for 60 s). Every request is appended to DIR/requests.jsonl as
{"mode", "signature_ok", "headers", "event"}; an event answered 200 is appended to
DIR/accepted.jsonl only once the answer was written. With SECRET_FILE, "signature_ok" says
whether X-Bwmon-Signature is sha256=<hex HMAC-SHA256 of the body> under the file's contents.
"""

import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, DIR = int(sys.argv[1]), sys.argv[2]
SECRET = open(sys.argv[3], "rb").read().strip() if len(sys.argv) > 3 else None
LOCK = threading.Lock()


def append(name, record):
    with LOCK, open(os.path.join(DIR, name), "a") as f:
        f.write(json.dumps(record) + "\n")


def mode():
    try:
        with open(os.path.join(DIR, "mode")) as f:
            return f.read().strip()
    except OSError:
        return "ok"


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        now = mode()
        signed = self.headers.get("X-Bwmon-Signature")
        ok = None
        if SECRET is not None:
            expect = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            ok = signed is not None and hmac.compare_digest(signed, expect)
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        headers = {k: self.headers.get(k) for k in
                   ("Content-Type", "X-Bwmon-Event", "X-Bwmon-Delivery", "User-Agent")}
        append("requests.jsonl", {"mode": now, "signature_ok": ok, "headers": headers,
                                  "event": event, "at": time.time()})
        if now == "hang":
            time.sleep(60)
            return
        status = 200 if now == "ok" else 500
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.wfile.flush()
        if status == 200:
            append("accepted.jsonl", event)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Hook).serve_forever()
