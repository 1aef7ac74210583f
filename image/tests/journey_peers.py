#!/usr/bin/python3
"""The other ends of journeys.py, each its own process on one side of the appliance (run with
Debian's /usr/bin/python3 inside a network namespace). Each tells journeys.py what happens
on its standard output, one line at a time:

    journey_peers.py smtp ADDRESS PORT USER PASSWORD   the mail server the relay sends to
    journey_peers.py machine PORT                      a machine on the device network
    journey_peers.py client ADDRESS PORT PATIENCE      the technician's client
"""

import json
import socket
import sys
import threading
import time


def smtp(address, port, user, password):
    """aiosmtpd on plain SMTP with AUTH required (so the relay must log in with the password the
    portal sealed); prints READY, then every message as one JSON line."""
    import email
    import email.policy
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(server, session, envelope, mechanism, data):
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (user.encode(), password.encode())
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            body = message.get_body(preferencelist=("plain",))
            print(json.dumps({"to": envelope.rcpt_tos, "login": session.auth_data.login.decode(),
                              "subject": str(message["subject"]), "body": body.get_content() if body else ""}),
                  flush=True)
            return "250 OK"

    Controller(Handler(), hostname=address, port=int(port), authenticator=authenticator,
               auth_required=True, auth_require_tls=False).start()
    print("READY", flush=True)
    threading.Event().wait()


def machine(port):
    """Streams to whoever connects, 50 times a second, until the connection breaks."""
    server = socket.create_server(("0.0.0.0", int(port)))
    print("READY", flush=True)

    def stream(conn):
        try:
            while True:
                conn.sendall(b"opc-ua-values " * 64)
                time.sleep(0.02)
        except OSError:
            pass
    while True:
        threading.Thread(target=stream, args=(server.accept()[0],), daemon=True).start()


def client(address, port, patience):
    """Connects (retrying for PATIENCE seconds; REFUSED if it cannot), then prints the bytes
    received so far at least every 0.1 s, and CLOSED when the connection ends."""
    deadline = time.time() + float(patience)
    while True:
        try:
            conn = socket.create_connection((address, int(port)), timeout=3)
            break
        except OSError as err:
            if time.time() > deadline:
                print("REFUSED", err, flush=True)
                sys.exit(1)
            time.sleep(0.5)
    print("CONNECTED", flush=True)
    conn.settimeout(0.1)
    total = 0
    while True:
        try:
            data = conn.recv(65536)
            if not data:
                print("CLOSED end of stream", flush=True)
                return
            total += len(data)
        except socket.timeout:
            pass
        except OSError as err:
            print("CLOSED", err, flush=True)
            return
        print("BYTES", total, flush=True)


if __name__ == "__main__":
    {"smtp": smtp, "machine": machine, "client": client}[sys.argv[1]](*sys.argv[2:])
