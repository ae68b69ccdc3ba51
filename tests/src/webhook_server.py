"""A webhook receiver for bwmon's tests, on loopback.

Usage: webhook_server.py PORT DIR [SECRET_FILE]

How it answers is read from DIR/mode at every request: "ok" (200), "fail" (500) or "hang"
(no answer for 60 s). Every request is appended to DIR/requests.jsonl as
{"mode", "signature_ok", "headers", "event"}; an event answered 200 is appended to
DIR/accepted.jsonl only once the answer was written. With SECRET_FILE, "signature_ok" says
whether X-Bwmon-Signature is sha256=<hex HMAC-SHA256 of the body> under the file's contents.
With DIR/tls.crt and DIR/tls.key it speaks HTTPS with that certificate; every TLS handshake
that fails is appended to DIR/tls_errors.jsonl as {"error"}.
"""

import hashlib
import hmac
import json
import os
import ssl
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


CERT, KEY = os.path.join(DIR, "tls.crt"), os.path.join(DIR, "tls.key")
TLS = None
if os.path.exists(CERT):
    TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    TLS.load_cert_chain(CERT, KEY)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        sock, addr = self.socket.accept()
        if TLS is not None:
            try:
                sock = TLS.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as e:
                append("tls_errors.jsonl", {"error": str(e)})
                sock.close()
                raise
        return sock, addr


Server(("127.0.0.1", PORT), Hook).serve_forever()
