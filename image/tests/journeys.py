#!/usr/bin/env python3
"""The first day on a Plantgate appliance, as the people who use it live it: over HTTPS, with
forms, CSRF tokens and cookies as a browser sends them (curl with a cookie jar).

1. first-run:     setup with the console's enrolment token, the required authenticator app,
                  recovery codes, sign out, sign in again with password and code;
2. mail-relay:    the relay set on the settings page (its password sealed), the test email
                  received by a real SMTP server (aiosmtpd) that requires that login;
3. remote-access: site, machine, approver (a user) and technician (a contractor invited by
                  email); request, approval by email, the machine's stream reaching the
                  technician, the revoke cutting it;
4. telemetry:     a device registered on the console, readings over HTTPS and MQTT over TLS,
                  seen on the devices page;
5. certificate:   the portal's certificate replaced on the settings page, served at the next
                  handshake;
6. audit:         the log viewed, verified and exported in the portal, verified on the console.

boot.py calls run(ctx) against the booted image. `journeys.py --local` runs the same journeys
against debug builds on loopback (see local()).
"""

import argparse
import base64
import dataclasses
import hashlib
import hmac
import html
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Callable, Optional

PYTHON = "/usr/bin/python3"  # Debian's, beside python3-aiosmtpd, whatever python3 is on PATH
PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "journey_peers.py")
ORGANISATION, SITE = "Moulding Plant Nord", "Hall A"
RELAY_USER, RELAY_PASSWORD = "plantgate-relay", "Relay-Secret-4711"
DEVICE_SERIAL = "PG-MON-1"
# The console line that registers a device; the console passes its words to `plantgate device`.
DEVICE_ADD = "device add --serial {serial} --kind monitor --site {site}"


@dataclasses.dataclass
class Context:
    """What the journeys need from where they run (boot.py's namespaces, or local())."""
    portal: str                        # the portal's base URL as the uplink sees it
    ingest_host: str                   # the ingest's address as the device network sees it
    ingest_https_port: int
    ingest_mqtt_port: int
    token: str                         # the first-admin enrolment token from the console
    on: Callable[[str, list], list]    # the argv that runs a command on the "uplink" or "device" side
    console: object                    # .command(line, timeout) -> (rc, text)
    check: Callable                    # check(ok, what, detail="") -> ok
    figure: Callable                   # figure(text)
    mail_listen: tuple                 # (address, port) our SMTP server listens on, uplink side
    mail_relay: tuple                  # (host, port) the administrator types on the settings page
    machine: tuple = ("192.168.50.20", 4840)  # a machine on the device network and its OPC UA port
    traffic: bool = True               # False locally: no firewall stands between the sides
    run_dir: Optional[str] = None      # for cookie jars, logs, certificates (else a new temp dir)
    log: Callable = print


class Abort(Exception):
    """A step the rest of its journey depends on failed (check has reported it)."""


def need(ctx, ok, what, detail=""):
    if not ctx.check(ok, what, detail):
        raise Abort(what)


def shorten(text, limit=600):
    text = re.sub(r"\s+", " ", text or "")
    return text if len(text) <= limit else text[:limit] + " ..."


def expect(ctx, reply, status, what, text=""):
    """A page the rest of the journey depends on: its status and what a person would read."""
    need(ctx, reply.status == status and text in reply.body, what,
         f"{reply.status} {reply.location} {shorten(reply.body)}")
    return reply


# ---------------------------------------------------------------- a browser and its users

@dataclasses.dataclass
class Reply:
    status: int
    headers: dict
    body: str

    @property
    def location(self):
        return self.headers.get("location", "")


def csrf(page):
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    return m.group(1) if m else ""


def hidden(page, name):
    m = re.search(rf'name="{name}" value="([^"]*)"', page)
    return html.unescape(m.group(1)) if m else ""


class Browser:
    """curl on the uplink side with a cookie jar: what a browser keeps and sends. Form posts
    carry the portal's Origin, as a browser's do from the portal's own pages."""

    def __init__(self, ctx, jar):
        self.ctx, self.jar = ctx, jar

    def request(self, path, fields=None):
        argv = ["curl", "-sk", "-i", "--max-time", "120", "-b", self.jar, "-c", self.jar]
        if fields is not None:
            argv += ["-H", f"Origin: {self.ctx.portal}", "-H", "Expect:"]
            for key, value in fields.items():
                argv += ["--data-urlencode", f"{key}={value}"]
        for _ in range(3):
            out = subprocess.run(self.ctx.on("uplink", argv + [self.ctx.portal + path]),
                                 capture_output=True, timeout=150).stdout.decode("utf-8", "replace")
            head, _, body = out.partition("\r\n\r\n")
            lines = head.split("\r\n")
            status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
            headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
            if status != 429:
                break
            # Passwords and codes are throttled per address; a person waits and tries again.
            wait = int(headers.get("retry-after", "30")) + 1
            self.ctx.log(f"    (the portal says slow down: waiting {wait} s, as a person would)")
            time.sleep(wait)
        return Reply(status, headers, body)


def totp(secret, step):
    """RFC 6238 (SHA-1, 6 digits): what an authenticator app shows for a 30-second step."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    return "%06d" % ((struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1000000)


class Authenticator:
    """A phone's authenticator app. The portal never accepts a time step twice, so a second
    code within the same 30 s waits for the next step, as a person waits for a new code."""

    def __init__(self, secret):
        self.secret, self.last = secret, None

    def code(self):
        while self.last is not None and int(time.time()) // 30 <= self.last:
            time.sleep(30.5 - time.time() % 30)
        self.last = int(time.time()) // 30
        return totp(self.secret, self.last)


class Person:
    """Someone with an account: a browser, a password, an authenticator app once set up."""

    def __init__(self, ctx, run_dir, name, email, password):
        self.ctx, self.name, self.email, self.password = ctx, name, email, password
        self.browser = Browser(ctx, os.path.join(run_dir, email.split("@")[0] + ".cookies"))
        self.app: Optional[Authenticator] = None
        self.recovery_codes = []

    def get(self, path):
        return self._fresh(lambda: self.browser.request(path))

    def post(self, path, fields):
        return self.browser.request(path, fields)

    def submit(self, page, action, fields):
        """Opens `page`, fills in its form for `action` and sends it with the page's CSRF token."""
        return self._fresh(lambda: self.post(action, {"csrf": csrf(self.get(page).body), **fields}))

    def _fresh(self, attempt):
        """Sensitive pages ask for the password (and a code) again once the last check is
        stale: the person confirms and goes on."""
        reply = attempt()
        if reply.status == 303 and reply.location.startswith("/account/confirm"):
            page = self.browser.request(reply.location)
            fields = {"csrf": csrf(page.body), "next": hidden(page.body, "next"), "password": self.password}
            if 'name="code"' in page.body and self.app:
                fields["code"] = self.app.code()
            expect(self.ctx, self.post("/account/confirm", fields), 303,
                   f"{self.name} gives the password again for a sensitive page")
            reply = attempt()
        return reply

    def enrol(self):
        """Sets up the authenticator app with the key the page shows: (page, page after)."""
        page = self.browser.request("/account/second-factor")
        secret = hidden(page.body, "secret")
        need(self.ctx, re.fullmatch(r"[A-Z2-7]{16,}", secret) is not None,
             f"{self.name}: the second-factor page shows a key for the authenticator app", shorten(page.body))
        self.app = Authenticator(secret)
        done = self.post("/account/second-factor", {"csrf": csrf(page.body), "secret": secret,
                                                     "code": self.app.code()})
        self.recovery_codes = re.findall(r"<li><code>([^<]+)</code></li>", done.body)
        return page, done

    def sign_in(self):
        """Password, then whatever second factor the portal asks for: (how, overview page)."""
        reply = expect(self.ctx, self.post("/login", {"email": self.email, "password": self.password}), 303,
                       f"{self.name} signs in with email and password")
        how = "password"
        if reply.location == "/login/second-factor":
            page = self.browser.request(reply.location)
            reply = self.post(reply.location, {"csrf": csrf(page.body), "code": self.app.code() if self.app else ""})
            need(self.ctx, reply.status == 303 and reply.location == "/",
                 f"{self.name}: the authenticator code is accepted", f"{reply.status} {shorten(reply.body)}")
            how = "password and code"
        elif reply.location == "/account/second-factor":
            self.enrol()
            how = "password, then set up an authenticator app"
        return how, self.browser.request("/")


# ---------------------------------------------------------------- helper processes

class Helper:
    """One of journey_peers.py's processes (SMTP server, machine, client) on one side; its
    stdout lines are kept with the time each arrived, its stderr goes to NAME.log."""

    def __init__(self, ctx, side, args, name, run_dir):
        self.lines = []
        self.proc = subprocess.Popen(ctx.on(side, [PYTHON, "-u", PEERS] + [str(a) for a in args]),
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                     stderr=open(os.path.join(run_dir, f"{name}.log"), "w"))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def wait_line(self, pattern, timeout):
        """The first line that matches `pattern`, waiting up to `timeout` seconds; else None."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for _, line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.1)
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class MailServer(Helper):
    def __init__(self, ctx, run_dir):
        super().__init__(ctx, "uplink", ["smtp", *ctx.mail_listen, RELAY_USER, RELAY_PASSWORD], "smtp", run_dir)

    def wait_for(self, to, subject, timeout=120):
        """The first message to `to` whose subject holds `subject`, as a dict; None if none came."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for message in (json.loads(l) for _, l in list(self.lines) if l.startswith("{")):
                if to in message["to"] and subject in message["subject"]:
                    return message
            time.sleep(0.2)
        return None


def received(client):
    """(bytes received, when the last of them came, whether the connection ended)."""
    total, last, ended = 0, 0.0, False
    for at, line in list(client.lines):
        if line.startswith("BYTES ") and int(line.split()[1]) > total:
            total, last = int(line.split()[1]), at
        ended = ended or line.startswith("CLOSED")
    return total, last, ended


def connect_once(ctx, run_dir, name):
    """Whether one connection from the uplink to the machine succeeds (3 s to answer)."""
    client = Helper(ctx, "uplink", ["client", *ctx.machine, 0], name, run_dir)
    said = client.wait_line("^(CONNECTED|REFUSED)", 30)
    client.stop()
    return said == "CONNECTED", said or "no answer"


# ---------------------------------------------------------------- TLS and certificates

def served_certificate(ctx, side, host, port):
    """The PEM of the certificate a TLS server presents at a new handshake, and its SHA-256."""
    out = subprocess.run(ctx.on(side, ["openssl", "s_client", "-connect", f"{host}:{port}", "-showcerts"]),
                         input="", capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", out, re.S)
    return (m.group(0), fingerprint(m.group(0))) if m else ("", "")


def fingerprint(pem):
    body = re.search(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S).group(1)
    return hashlib.sha256(base64.b64decode("".join(body.split()))).hexdigest()


def new_certificate(directory, address):
    """A self-signed certificate and key, as an administrator makes them with openssl. `openssl
    ca` rather than `req -x509` only to start the validity an hour ago: the portal refuses a
    certificate not yet valid by the appliance's clock, which may lag this host's."""
    def at(seconds):
        return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() + seconds))
    open(os.path.join(directory, "index.txt"), "w").close()
    open(os.path.join(directory, "serial"), "w").write("1000\n")
    config = os.path.join(directory, "ca.cnf")
    open(config, "w").write(
        f"[ca]\ndefault_ca = journeys\n[journeys]\ndatabase = {directory}/index.txt\n"
        f"new_certs_dir = {directory}\nserial = {directory}/serial\ndefault_md = sha256\n"
        "policy = anything\ncopy_extensions = copy\nunique_subject = no\nx509_extensions = leaf\n"
        "[anything]\ncommonName = supplied\n"
        "[leaf]\nbasicConstraints = critical, CA:FALSE\nextendedKeyUsage = serverAuth\n")
    key, request, cert = (os.path.join(directory, n) for n in ("portal.key", "portal.csr", "portal.crt"))
    subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request,
                    "-subj", "/CN=plantgate.plant.test",
                    "-addext", f"subjectAltName=DNS:plantgate.plant.test,IP:{address}"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "ca", "-batch", "-config", config, "-selfsign", "-keyfile", key, "-in", request,
                    "-out", cert, "-notext", "-startdate", at(-3600), "-enddate", at(90 * 86400)],
                   check=True, capture_output=True)
    return open(cert).read(), open(key).read()


# ---------------------------------------------------------------- the journeys

class Day:
    """What the journeys share: the people, the mail server, the site, the request."""

    def __init__(self, ctx, run_dir):
        self.ctx, self.run_dir = ctx, run_dir
        self.admin = Person(ctx, run_dir, "Ada Lovelace", "ada@plant.test", "Erster-Tag-Anlage-2031")
        self.approver = Person(ctx, run_dir, "Bruno Brandt", "bruno@plant.test", "Freigabe-Schicht-8812")
        self.technician = Person(ctx, run_dir, "Tess Weber", "tess@service.test", "Wartung-Presse-Vier-44")
        self.mail: Optional[MailServer] = None
        self.site_id = self.request_path = None
        self.helpers = []


def first_run(day):
    ctx, admin = day.ctx, day.admin
    start = admin.browser.request("/")
    ctx.check(start.status == 303 and start.location == "/setup", "a new appliance sends the first visitor to /setup",
              f"{start.status} {start.location}")
    expect(ctx, admin.browser.request("/setup"), 200, "the first-run page asks for the enrolment token",
           "Create the first administrator")
    created = expect(ctx, admin.post("/setup", {"token": ctx.token, "organisation": ORGANISATION, "name": admin.name,
                                                "email": admin.email, "password": admin.password}),
                     303, "setup with the console's enrolment token creates the administrator")
    ctx.check("The administrator was created" in admin.browser.request(created.location).body,
              "the login page says the administrator was created")
    ctx.check("Already set up" in admin.browser.request("/setup").body,
              "the first-run page is closed once the administrator exists")

    reply = admin.post("/login", {"email": admin.email, "password": admin.password})
    need(ctx, reply.status == 303 and reply.location == "/account/second-factor",
         "the administrator's first sign-in leads to setting up a second factor", f"{reply.status} {reply.location}")
    home = admin.browser.request("/")
    ctx.check(home.status == 303 and home.location == "/account/second-factor",
              "without the second factor the portal stays closed", f"{home.status} {home.location}")
    page, done = admin.enrol()
    ctx.check("Your role must use a second factor" in page.body, "the page says the role must use a second factor")
    expect(ctx, done, 200, "the code from the authenticator app turns the second factor on",
           "Your authenticator app is set up")
    ctx.check(len(admin.recovery_codes) == 10, "ten recovery codes are shown, once", str(admin.recovery_codes))
    home = admin.browser.request("/")
    need(ctx, f"Welcome, {admin.name}" in home.body and ORGANISATION in home.body,
         "the overview welcomes the administrator by name, in the organisation", shorten(home.body))

    out = admin.post("/logout", {"csrf": csrf(admin.browser.request("/sessions").body)})
    ctx.check(out.status == 303 and "You are logged out" in admin.browser.request(out.location).body,
              "signing out says so", f"{out.status} {out.location}")
    home = admin.browser.request("/")
    ctx.check(home.status == 303 and home.location == "/login", "after signing out the portal asks to log in",
              f"{home.status} {home.location}")
    how, home = admin.sign_in()
    need(ctx, how == "password and code" and f"Welcome, {admin.name}" in home.body,
         "signing in again takes password and authenticator code, and reaches the overview",
         f"{how}: {shorten(home.body)}")
    ctx.check(f"{admin.name} (admin)" in home.body, "the header shows who is signed in, with the role")


def mail_relay(day):
    ctx, admin = day.ctx, day.admin
    day.mail = MailServer(ctx, day.run_dir)
    day.helpers.append(day.mail)
    need(ctx, day.mail.wait_line("^READY", 30) is not None,
         "an SMTP server (aiosmtpd, login required) listens on {}:{}".format(*ctx.mail_listen))
    expect(ctx, admin.get("/settings"), 200, "the settings page shows the mail relay", "Mail relay")
    host, port = ctx.mail_relay
    saved = admin.submit("/settings", "/settings/mail", {
        "host": host, "port": str(port), "security": "none", "username": RELAY_USER,
        "password": RELAY_PASSWORD, "from": "plantgate@plant.test"})
    expect(ctx, saved, 200, f"the mail relay {host}:{port} with a login is saved",
           "Every service sends mail through this relay now")
    ctx.check("stored; leave empty to keep it" in saved.body and RELAY_PASSWORD not in saved.body,
              "the page says a relay password is stored, and never shows it")
    sent = admin.submit("/settings", "/settings/mail/test", {})
    ctx.check(f"A test email was sent to {admin.email}" in sent.body, "the test email is reported sent",
              shorten(sent.body))
    message = day.mail.wait_for(admin.email, "Test email")
    need(ctx, message is not None, "the test email arrives at the SMTP server", str(day.mail.lines[-3:]))
    ctx.check(message["login"] == RELAY_USER, "the relay logged in with the stored (sealed) password", str(message))


def set_up_site(day):
    """The administrator's part of remote access: site, policy, machine, approver, contractor."""
    ctx, admin, approver, tech = day.ctx, day.admin, day.approver, day.technician
    address = ctx.machine[0]
    site = expect(ctx, admin.submit("/sites", "/sites", {"name": SITE, "location": "North"}), 303,
                  "the administrator adds a site").location
    day.site_id = int(site.rsplit("/", 1)[1])
    expect(ctx, admin.submit(site, f"{site}/policy", {
        "approval_required": "1", "max_minutes": "60", "allowed_hours": "", "timezone": "UTC",
        "device_allowlist": "192.168.50.0/24", "declared_networks": ""}), 303,
        "the site's policy lets the device network be reached, with approval")
    expect(ctx, admin.submit(site, f"{site}/machines", {"name": "Press 1", "address": address, "agents": "opc-ua"}),
           303, f"the machine Press 1 ({address}, OPC UA) is added")
    page = admin.get(site)
    ctx.check("Press 1" in page.body and address in page.body, "the site page lists the machine")

    expect(ctx, admin.submit("/users", "/users", {"name": approver.name, "email": approver.email, "role": "approver",
                                                  "password": approver.password}),
           303, "the administrator adds an approver with a first password")
    m = re.search(rf'<option value="(\d+)">{re.escape(approver.name)} \(', admin.get(site).body)
    need(ctx, m is not None, "the site page offers the new approver")
    expect(ctx, admin.submit(site, f"{site}/approvers", {"user": m.group(1), "action": "add"}), 303,
           "the approver is named for the site")
    ctx.check(approver.email in admin.get(site).body, "the site page lists the approver")

    expect(ctx, admin.submit(site, f"{site}/invite", {"name": tech.name, "email": tech.email, "days": "7"}), 303,
           "the administrator invites a contractor technician to the site")
    invitation = day.mail.wait_for(tech.email, "You are invited")
    link = re.search(r"/invite/\d+/\S+", invitation["body"]) if invitation else None
    need(ctx, link is not None, "the technician receives the invitation email with a link", str(invitation)[:600])
    return link.group(0)


def remote_access(day):
    ctx, approver, tech = day.ctx, day.approver, day.technician
    address, port = ctx.machine
    if ctx.traffic:
        machine = Helper(ctx, "device", ["machine", port], "machine", day.run_dir)
        day.helpers.append(machine)
        need(ctx, machine.wait_line("^READY", 30) is not None, f"a machine streams on {address}:tcp/{port}")
    link = set_up_site(day)

    ctx.check("Set your password" in tech.browser.request(link).body,
              "the invitation link asks the technician for a password")
    expect(ctx, tech.post(link, {"password": tech.password, "repeat": tech.password}), 303,
           "the technician sets a password through the link")
    how, home = tech.sign_in()
    need(ctx, f"Welcome, {tech.name}" in home.body, "the technician signs in and reaches the overview",
         f"{how}: {shorten(home.body)}")
    ctx.check(how == "password, then set up an authenticator app" and len(tech.recovery_codes) == 10,
              "a contractor must set up an authenticator app at first sign-in", how)
    m = re.search(r'<option value="([^"]+)"[^>]*>[^<]*Press 1', tech.get("/access").body)
    target = html.unescape(m.group(1)) if m else ""
    need(ctx, target.endswith("/opc-ua"), "the technician's access page offers Press 1 over OPC UA", target)
    asked = expect(ctx, tech.submit("/access", "/access", {
        "target": target, "minutes": "30", "declared_address": "",
        "reason": "Check the OPC UA server after the firmware change"}), 303, "the technician asks for 30 minutes")
    day.request_path = asked.location
    ctx.check('<td id="state">pending</td>' in tech.get(day.request_path).body, "the request is pending")
    if ctx.traffic:
        connected, said = connect_once(ctx, day.run_dir, "before-approval")
        ctx.check(not connected, f"before approval the technician cannot connect to {address}:tcp/{port}", said)

    notice = day.mail.wait_for(approver.email, "Remote access request")
    need(ctx, notice is not None and day.request_path in notice["body"],
         "the approver gets an email with a link to the request", str(notice)[:600])
    how, home = approver.sign_in()
    need(ctx, f"Welcome, {approver.name}" in home.body, "the approver signs in", f"{how}: {shorten(home.body)}")
    page = approver.get(day.request_path)
    ctx.check('id="approve"' in page.body and tech.name in page.body,
              "the approver sees who asks, and can approve", shorten(page.body))
    expect(ctx, approver.submit(day.request_path, day.request_path + "/approve", {"minutes": ""}), 303,
           "the approver approves")
    expect(ctx, tech.get(day.request_path), 200, "the technician's page says to connect now", "Connect now")

    client = None
    if ctx.traffic:
        client = Helper(ctx, "uplink", ["client", address, port, 30], "client", day.run_dir)
        day.helpers.append(client)
        deadline = time.time() + 30
        while time.time() < deadline and received(client)[0] < 10000 and client.proc.poll() is None:
            time.sleep(0.2)
        need(ctx, received(client)[0] >= 10000, "after approval the machine's stream reaches the technician",
             str(client.lines[-3:]))
    else:
        ctx.log("    !!! SKIPPED LOCALLY: the machine's stream through the firewall (no connection before "
                "approval, data after it, cut by the revoke): no firewall stands between the sides here.")

    page = approver.get(day.request_path)
    expect(ctx, approver.post(day.request_path + "/end", {"csrf": csrf(page.body), "reason": "Done for today"}),
           303, "the approver revokes the session")
    revoked_at = time.time()
    if client:
        time.sleep(1.5)  # the controller cuts within a second; bytes already in flight may land
        before = received(client)
        time.sleep(4)
        total, last, ended = received(client)
        ctx.check(ended or total == before[0],
                  "after the revoke no more bytes reach the technician (or the connection is reset)",
                  f"{before[0]} bytes 1.5 s after the revoke, {total} at 5.5 s")
        ctx.figure(f"remote access: the stream's last bytes arrived {last - revoked_at:+.1f} s after the revoke "
                   f"returned ({total} bytes in the session)")
        client.stop()
        connected, said = connect_once(ctx, day.run_dir, "after-revoke")
        ctx.check(not connected, "after the revoke a new connection fails", said)
    page = tech.get(day.request_path)
    ctx.check('<td id="state">ended</td>' in page.body and f"revoked by {approver.name}: Done for today" in page.body,
              "the technician's page shows the session ended, revoked by the approver, with the reason")


def telemetry(day):
    ctx, admin, host = day.ctx, day.admin, day.ctx.ingest_host
    need(ctx, day.site_id is not None, "a site exists for the device")
    rc, out = ctx.console.command(DEVICE_ADD.format(serial=DEVICE_SERIAL, site=day.site_id), 120)
    m = re.search(r"\bpgd_[A-Za-z0-9_-]{20,}", out)
    need(ctx, rc == 0 and m is not None, f"the console registers device {DEVICE_SERIAL} and shows its secret once",
         f"rc={rc} {shorten(out)}")
    secret = m.group(0)

    def body(seq, state):  # timestamps 5 s back: the appliance's clock may lag this host's
        return json.dumps({"readings": [{"metric": "temperature_c", "value": 21.5 + seq, "seq": seq,
                                         "ts": int(time.time() * 1000) - 5000}], "states": [state]})

    def devices_row(text, timeout=30):
        """The device's row on the devices page, once it shows `text` (or the timeout passed)."""
        deadline = time.time() + timeout
        while True:
            page = admin.get("/devices").body
            # The serial links to the device's own page.
            row = re.search(rf'<tr class="device"><td>(?:<a href="/devices/\d+">)?{DEVICE_SERIAL}\b.*?</tr>', page, re.S)
            if (row and text in row.group(0)) or time.time() > deadline:
                return row.group(0) if row else shorten(page)
            time.sleep(1)

    r = subprocess.run(ctx.on("device", [
        "curl", "-sk", "--max-time", "60", "-o", "/dev/null", "-w", "%{http_code}",
        "-H", f"Authorization: Bearer {secret}", "-H", "Content-Type: application/json",
        "--data-binary", body(1, {"firmware_version": "1.4.2", "battery_pct": 87, "signal_dbm": -61}),
        f"https://{host}:{ctx.ingest_https_port}/v1/readings"]), capture_output=True, text=True, timeout=90)
    need(ctx, r.stdout == "200", f"a reading posted over HTTPS to {host}:{ctx.ingest_https_port} is accepted",
         r.stdout)
    row = devices_row("87 %")
    ctx.check(all(t in row for t in ("87 %", "1.4.2", "-61 dBm", SITE)) and "never" not in row,
              "the devices page shows what the device reported over HTTPS (battery, firmware, signal, last seen)",
              shorten(row))

    # The ingest's certificate is self-signed for the appliance's name: trusted as fetched (as a
    # device is provisioned with it), its name not matched against the address (--insecure).
    pem, _ = served_certificate(ctx, "device", host, ctx.ingest_mqtt_port)
    cafile = os.path.join(day.run_dir, "ingest.pem")
    open(cafile, "w").write(pem)
    r = subprocess.run(ctx.on("device", [
        "mosquitto_pub", "-h", host, "-p", str(ctx.ingest_mqtt_port), "--cafile", cafile, "--insecure",
        "-u", DEVICE_SERIAL, "-P", secret, "-i", DEVICE_SERIAL, "-q", "1",
        "-t", f"plantgate/{DEVICE_SERIAL}/readings", "-m", body(2, {"battery_pct": 86})]),
        capture_output=True, text=True, timeout=90)
    need(ctx, pem != "" and r.returncode == 0,
         f"a reading published over MQTT/TLS to {host}:{ctx.ingest_mqtt_port} is acknowledged",
         f"rc={r.returncode} {r.stdout} {r.stderr}")
    ctx.check("86 %" in devices_row("86 %"), "the devices page shows what the device reported over MQTT (battery)")


def certificate(day):
    ctx, admin = day.ctx, day.admin
    url = urllib.parse.urlsplit(ctx.portal)
    host, port = url.hostname, url.port or 443
    _, before = served_certificate(ctx, "uplink", host, port)
    need(ctx, before != "", f"the portal presents a certificate at {host}:{port}")
    cert, key = new_certificate(tempfile.mkdtemp(prefix="certificate-", dir=day.run_dir), host)
    wanted = fingerprint(cert)
    page = admin.submit("/settings", "/settings/certificate", {"certificate": cert, "private_key": key})
    expect(ctx, page, 200, "the settings page installs the new certificate", 'id="certificate-done"')
    ctx.check(wanted in page.body, "the settings page shows the new certificate's SHA-256")
    _, after = served_certificate(ctx, "uplink", host, port)
    ctx.check(after == wanted and after != before, "the next TLS handshake serves the new certificate",
              f"before {before}, after {after}, installed {wanted}")


def audit(day):
    ctx, admin = day.ctx, day.admin
    expect(ctx, admin.get("/audit"), 200, "the administrator opens the audit log", "Audit log")
    request = "access_request:" + day.request_path.rsplit("/", 1)[1] if day.request_path else "-"
    for action, what in (("auth.second_factor.enabled", "the second factor set up"),
                         ("settings.smtp.changed", "the mail relay saved"),
                         ("user.invited", "the technician invited"), ("access.approved", "the approval"),
                         ("access.revoked", "the revoke"), ("device.enrolled", "the device registered"),
                         ("tls.certificate.replaced", "the certificate replaced")):
        page = admin.get("/audit?" + urllib.parse.urlencode({"action": action}))
        ctx.check(f"<td>{action}</td>" in page.body, f"the audit log shows {what} ({action})")
    page = admin.get("/audit?" + urllib.parse.urlencode({"target": request}))
    ctx.check("<td>access.requested</td>" in page.body and "<td>access.revoked</td>" in page.body,
              f"the request's story is found by its target ({request})")
    page = admin.get("/audit?verify=1")
    ctx.check("The chain is intact" in page.body, "the portal verifies the chain as intact",
              shorten(re.sub(r"<table>.*", "", page.body, flags=re.S)))

    export = admin.get("/audit/export?format=jsonl")
    ctx.check(export.status == 200 and "attachment" in export.headers.get("content-disposition", ""),
              "the audit export downloads as a file", f"{export.status} {export.headers}")
    lines = export.body.splitlines()
    records = [json.loads(line) for line in lines if re.fullmatch(r"\{.*\}", line)]
    ctx.check(len(records) > 20 and len(records) == len(lines), "the export holds the records, one JSON object a line",
              f"{len(records)} of {len(lines)} lines")
    ctx.check(any(r.get("action") == "access.approved" and r.get("target") == request for r in records),
              "the export holds the approval of the technician's request")
    rc, out = ctx.console.command("audit", 300)
    ctx.check(rc == 0 and "intact" in out, "`audit` on the console says the log is intact", f"rc={rc} {shorten(out)}")


JOURNEYS = [("first-run", first_run), ("mail-relay", mail_relay), ("remote-access", remote_access),
            ("telemetry", telemetry), ("certificate", certificate), ("audit", audit)]


def run(ctx):
    """Runs the journeys in order. Each needs the ones before it (the administrator, the relay,
    the site), so a journey that cannot go on stops the rest, loudly."""
    run_dir = os.path.join(ctx.run_dir, "journeys") if ctx.run_dir else tempfile.mkdtemp(prefix="plantgate-journeys-")
    os.makedirs(run_dir, exist_ok=True)
    day = Day(ctx, run_dir)
    ctx.log(f"-- first-day journeys over HTTPS at {ctx.portal} (files in {run_dir})")
    try:
        for number, (name, journey) in enumerate(JOURNEYS):
            ctx.log(f"-- journey {name}")
            started = time.time()
            try:
                journey(day)
            except Abort:
                left = ", ".join(n for n, _ in JOURNEYS[number + 1:]) or "none"
                ctx.check(False, f"journey {name} ran to the end", f"stopped; not run: {left}")
                return
            finally:
                ctx.figure(f"journey {name}: {time.time() - started:.1f} s")
    except Exception as err:  # noqa: BLE001 - reported as a failure, never swallowed
        ctx.check(False, "the journeys ran to the end", repr(err))
    finally:
        for helper in day.helpers:
            helper.stop()


# ---------------------------------------------------------------- a local development instance

class LocalConsole:
    """The console commands the journeys use, run directly as the console menu runs them:
    `audit` is `plantgate audit verify`, `device ARGS` is `plantgate device ARGS`."""

    def __init__(self, plantgate, env):
        self.plantgate, self.env = plantgate, env

    def command(self, line, timeout=120):
        words = line.split()
        argv = {"audit": ["audit", "verify"], "device": ["device"] + words[1:]}[words[0]]
        r = subprocess.run([self.plantgate] + argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout + r.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(binary, env, port, log):
    proc = subprocess.Popen([binary], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{os.path.basename(binary)} did not listen on {port}; see {log}")


def local(args):
    """The portal and ingest from debug builds on loopback, on a fresh data directory, after
    `plantgate init` as on the appliance. Both "sides" are this machine, without a firewall."""
    failures = []

    def check(ok, what, detail=""):
        print(f"  {'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail and not ok else ""), flush=True)
        if not ok:
            failures.append(what)
        return ok

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not args.no_build:
        subprocess.run(["cargo", "build", "--bins"], cwd=repo, check=True)
    bins = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target")), "debug")
    home = tempfile.mkdtemp(prefix="plantgate-local-")
    web, http, ingest, mqtt, smtp = (free_port() for _ in range(5))
    config = os.path.join(home, "plantgate.toml")
    with open(config, "w") as f:
        f.write(f'data_dir = "{home}/data"\n[log]\nlevel = "warn"\n'
                f'[web]\nhttps_listen = "127.0.0.1:{web}"\nhttp_listen = "127.0.0.1:{http}"\nhost_name = "localhost"\n'
                f'[ingest]\nhttps_listen = "127.0.0.1:{ingest}"\nmqtt_listen = "127.0.0.1:{mqtt}"\n')
    env = dict(os.environ, PLANTGATE_CONFIG=config)
    services = []
    try:
        init = subprocess.run([os.path.join(bins, "plantgate"), "init"], env=env, capture_output=True, text=True)
        m = re.search(r"First-admin enrolment token.*?\n\s*\n\s+(\S+)", init.stdout, re.S)
        if init.returncode != 0 or not m:
            raise RuntimeError(f"plantgate init: {init.stdout}{init.stderr}")
        for name, port in (("plantgate-web", web), ("plantgate-ingest", ingest)):
            services.append(start_service(os.path.join(bins, name), env, port, os.path.join(home, f"{name}.log")))
        run(Context(portal=f"https://127.0.0.1:{web}", ingest_host="127.0.0.1", ingest_https_port=ingest,
                    ingest_mqtt_port=mqtt, token=m.group(1), on=lambda side, argv: argv,
                    console=LocalConsole(os.path.join(bins, "plantgate"), env), check=check,
                    figure=lambda text: print(f"  >>> {text}", flush=True), mail_listen=("127.0.0.1", smtp),
                    mail_relay=("127.0.0.1", smtp), traffic=False, run_dir=home))
    except Exception as err:  # noqa: BLE001 - reported as a failure
        check(False, "the local instance ran", repr(err))
    finally:
        for proc in services:
            proc.terminate()
            proc.wait(10)
    if failures or args.keep:
        print(f"(local instance kept: {home})")
    else:
        shutil.rmtree(home, ignore_errors=True)
    if failures:
        sys.exit(f"\nJOURNEYS FAILED ({len(failures)}):\n  - " + "\n  - ".join(failures))
    print("\njourneys: every step passed (the stream through the firewall was skipped: image only)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", action="store_true", help="run against debug builds on loopback")
    parser.add_argument("--no-build", action="store_true", help="use target/debug as it is")
    parser.add_argument("--keep", action="store_true", help="keep the local instance's directory")
    parsed = parser.parse_args()
    if not parsed.local:
        parser.error("on its own it runs only --local; image/tests/boot.py runs it against the image")
    local(parsed)
