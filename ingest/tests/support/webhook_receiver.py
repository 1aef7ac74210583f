#!/usr/bin/env python3
"""A data connector receiver, as a customer would write one, using only Python's standard
library: HTTPS, and a check of the Plantgate-Signature header before anything is trusted.

    webhook_receiver.py CERT KEY SECRET OUT.jsonl  < LISTENING-SOCKET

It serves on the listening socket it is given as its standard input (as inetd's "wait"
services are), so that whoever starts it keeps the port across its restarts.

Each request is appended to OUT.jsonl as {"ok": bool, "delivery", "event", "body"}; a bad or
stale signature is answered 401 and recorded with "ok": false.
"""
import hashlib
import hmac
import json
import socket
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 300
CERT, KEY, SECRET, OUT = sys.argv[1:5]


def verify(header: str, body: bytes) -> bool:
    """t=UNIX_SECONDS,v1=HEX: HMAC-SHA256(secret, f"{t}." + body), within the tolerance."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > TOLERANCE_SECONDS:
        return False
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ok = verify(self.headers.get("Plantgate-Signature", ""), body)
        record = {
            "ok": ok,
            "delivery": self.headers.get("Plantgate-Delivery"),
            "event": self.headers.get("Plantgate-Event"),
            "body": json.loads(body) if ok else body.decode("utf-8", "replace"),
        }
        with open(OUT, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        self.send_response(204 if ok else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


listener = socket.socket(fileno=sys.stdin.fileno())
listener.setblocking(True)
server = ThreadingHTTPServer(listener.getsockname(), Handler, bind_and_activate=False)
server.socket.close()
server.socket = listener
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.minimum_version = ssl.TLSVersion.TLSv1_2
context.load_cert_chain(CERT, KEY)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
