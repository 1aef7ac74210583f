#!/usr/bin/env python3
"""Boots the Plantgate image in QEMU (OVMF, TCG) and checks it as a user would notice.

Topology (all host-side ends live in network namespaces this test makes and removes):

    pgt-up   (uplink host, 10.77.0.1/24, dnsmasq DHCP+DNS)  --tap--  eth0  (uplink)  appliance
    pgt-dev  (device host, 192.168.50.20/24)           --tap--  eth1  (device)  appliance

The appliance's serial port is its console menu (plantgate-console); the test reads
/proc/<pid>/status, mounts, Lynis and the updater through it. Update media are hot-plugged
as virtio disks through the QEMU monitor (into PCIe root ports), as a USB stick would be.

Every guest boots with UEFI Secure Boot enforced: OVMF's Secure Boot build (q35 with SMM)
with Microsoft's keys enrolled, as ESXi and Hyper-V ship them.
"""

import argparse
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import journeys

UP_NS, DEV_NS = "pgt-up", "pgt-dev"
UP_TAP, DEV_TAP = "pgtup0", "pgtdev0"
UP_HOST, UP_BOX = "10.77.0.1", "10.77.0.10"
DEV_HOST, DEV_BOX = "192.168.50.20", "192.168.50.1"
UP_MAC, DEV_MAC = "52:54:00:77:00:10", "52:54:00:50:00:01"
MAIL_NAME = "mail.plant.test"   # resolved by the uplink's DNS (dnsmasq in pgt-up)
# The documented ports (docs/image.md, "Ports"): portal on uplink, ingest on device, nothing else.
UPLINK_PORTS = {80, 443}
DEVICE_PORTS = {8443, 8883}
# UDP: nothing answers on either side. Inside, the one UDP socket on a real interface is
# systemd-networkd's DHCP client (port 68, uplink), and the ruleset drops what arrives there
# but replies to its own requests.
UDP_SOCKETS = {68}
LYNIS_FLOOR = int(os.environ.get("PLANTGATE_LYNIS_FLOOR", "70"))
SIZE_LIMIT_MB = 300

failures = []
figures = []


def log(msg):
    print(msg, flush=True)


def check(ok, what, detail=""):
    log(f"  {'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(what + (f": {detail}" if detail else ""))
    return ok


def figure(text):
    figures.append(text)
    log(f"  >>> {text}")


def sh(cmd, check_rc=True, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=check_rc, text=True,
                          capture_output=True, **kw)


def ns(name, cmd, **kw):
    return sh(["ip", "netns", "exec", name] + cmd, check_rc=False, **kw)


class Console:
    """The appliance's serial console over QEMU's Unix socket."""

    def __init__(self, path, logfile):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for _ in range(100):
            try:
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.1)
        self.sock.setblocking(False)
        self.buf = ""
        self.log = open(logfile, "a", encoding="utf-8", errors="replace")

    def pump(self, timeout=0.5):
        import select
        r, _, _ = select.select([self.sock], [], [], timeout)
        if r:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("serial console closed (QEMU exited?)")
            text = data.decode("utf-8", errors="replace").replace("\r", "")
            self.log.write(text)
            self.log.flush()
            self.buf += text

    def mark(self):
        return len(self.buf)

    def wait(self, pattern, timeout, since=0):
        deadline = time.time() + timeout
        rx = re.compile(pattern, re.S)
        while time.time() < deadline:
            m = rx.search(self.buf, since)
            if m:
                return m
            self.pump()
        return None

    def send(self, line):
        self.sock.sendall((line + "\n").encode())

    def command(self, line, timeout=120):
        name = line.split()[0]
        since = self.mark()
        self.send(line)
        m = self.wait(rf"<<<pg-begin {name}>>>\n(.*?)<<<pg-end {name} rc=(\d+)>>>", timeout, since)
        if not m:
            raise RuntimeError(f"console command {line!r} did not finish in {timeout}s")
        return int(m.group(2)), m.group(1)

    def wait_prompt(self, timeout):
        """Waits until the console menu answers (the box finished booting far enough)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            since = self.mark()
            self.send("")
            self.send("help")
            if self.wait(r"<<<pg-end help rc=0>>>", 10, since):
                return True
        return False


class Qemu:
    def __init__(self, disk, run, ovmf_code, ovmf_vars, accel, isolated=False):
        """isolated: the two NICs are wired to QEMU hubs with nothing else on them (no tap, no
        traffic leaves QEMU): for the Lynis guest that runs beside the main one."""
        self.run = run
        self.mon_path = os.path.join(run, "monitor.sock")
        self.ser_path = os.path.join(run, "serial.sock")
        vars_copy = os.path.join(run, "OVMF_VARS.fd")
        shutil.copy(ovmf_vars, vars_copy)
        fmt = "raw" if disk.endswith(".raw") else "qcow2"
        self.cmd = [
            "qemu-system-x86_64", "-accel", accel, "-m", "2048", "-smp", "2",
            # Secure Boot: OVMF's SMM build guards its variables, so q35 with SMM and the
            # flash in secure mode (and no S3, which OVMF's SMM build does not support).
            "-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on",
            "-global", "ICH9-LPC.disable_s3=1",
            "-nographic", "-nodefaults", "-vga", "none",
            "-drive", f"if=pflash,format=raw,readonly=on,file={ovmf_code}",
            "-drive", f"if=pflash,format=raw,file={vars_copy}",
            "-drive", f"if=virtio,format={fmt},file={disk}",
            # Two hot-plug slots for the update media (PCIe has none on the root bus).
            "-device", "pcie-root-port,id=hp1,chassis=1,addr=0x10",
            "-device", "pcie-root-port,id=hp2,chassis=2,addr=0x11",
            "-netdev", "hubport,id=up,hubid=1" if isolated else f"tap,id=up,ifname={UP_TAP},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=up,mac={UP_MAC},addr=0x5",
            "-netdev", "hubport,id=dev,hubid=2" if isolated else f"tap,id=dev,ifname={DEV_TAP},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=dev,mac={DEV_MAC},addr=0x6",
            "-chardev", f"socket,id=ser0,path={self.ser_path},server=on,wait=off",
            "-serial", "chardev:ser0",
            "-monitor", f"unix:{self.mon_path},server=on,wait=off",
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-pci,rng=rng0",
        ]
        self.proc = subprocess.Popen(self.cmd, stdout=open(os.path.join(run, "qemu.log"), "w"),
                                     stderr=subprocess.STDOUT)
        self.started = time.time()

    def monitor(self, command):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.mon_path)
        s.settimeout(5)
        s.sendall((command + "\n").encode())
        time.sleep(1)
        try:
            out = s.recv(65536).decode(errors="replace")
        except socket.timeout:
            out = ""
        s.close()
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def setup_namespaces(run):
    teardown_namespaces()
    for n in (UP_NS, DEV_NS):
        sh(["ip", "netns", "add", n])
        sh(["ip", "-n", n, "link", "set", "lo", "up"])
    # QEMU made the taps in this namespace (down, unaddressed); move them before they carry
    # a single packet here. On a loaded host QEMU can take more than a second to make them.
    deadline = time.time() + 60
    while time.time() < deadline and any(
            subprocess.run(["ip", "link", "show", tap], capture_output=True).returncode != 0
            for tap in (UP_TAP, DEV_TAP)):
        time.sleep(0.2)
    sh(["ip", "link", "set", UP_TAP, "netns", UP_NS])
    sh(["ip", "link", "set", DEV_TAP, "netns", DEV_NS])
    sh(["ip", "-n", UP_NS, "addr", "add", f"{UP_HOST}/24", "dev", UP_TAP])
    sh(["ip", "-n", UP_NS, "link", "set", UP_TAP, "up"])
    # The technician's route to the machine network through the appliance (for the forward check).
    sh(["ip", "-n", UP_NS, "route", "add", "192.168.50.0/24", "via", UP_BOX])
    sh(["ip", "-n", DEV_NS, "addr", "add", f"{DEV_HOST}/24", "dev", DEV_TAP])
    sh(["ip", "-n", DEV_NS, "link", "set", DEV_TAP, "up"])
    sh(["ip", "-n", DEV_NS, "route", "add", "default", "via", DEV_BOX])
    dnsmasq = subprocess.Popen(
        ["ip", "netns", "exec", UP_NS, "dnsmasq", "--keep-in-foreground", "--no-resolv",
         "--no-hosts", f"--interface={UP_TAP}", "--bind-interfaces",
         # The plant's DNS (offered by DHCP): one name for the mail relay, nothing forwarded.
         f"--host-record={MAIL_NAME},{UP_HOST}",
         f"--dhcp-range={UP_HOST[:-1]}100,{UP_HOST[:-1]}150,255.255.255.0,1h",
         f"--dhcp-host={UP_MAC},{UP_BOX}", f"--dhcp-leasefile={run}/leases",
         f"--pid-file={run}/dnsmasq.pid", "--log-dhcp", f"--log-facility={run}/dnsmasq.log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # A "PLC" on the device network: listens on tcp/102 (Siemens S7).
    plc = subprocess.Popen(["ip", "netns", "exec", DEV_NS, "python3", "-c",
                            "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                            "s.bind(('0.0.0.0',102));s.listen()\nwhile True:\n c,_=s.accept();c.sendall(b'PLC');c.close()"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [dnsmasq, plc]


def teardown_namespaces():
    for n in (UP_NS, DEV_NS):
        subprocess.run(["ip", "netns", "pids", n], capture_output=True)
        pids = subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 15)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", n], capture_output=True)


def curl_ok(namespace, url, timeout=5):
    r = ns(namespace, ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout), url])
    return r.returncode == 0 and r.stdout.strip() not in ("", "000"), r.stdout.strip() or f"curl exit {r.returncode}"


def nmap_open(namespace, target):
    r = ns(namespace, ["nmap", "-Pn", "-n", "-sT", "-p-", "--open", "-T4", "--max-retries", "1",
                       "--min-rate", "3000", "-oG", "-", target], timeout=900)
    ports = set(int(p) for p in re.findall(r"(\d+)/open/tcp", r.stdout))
    return ports


def nmap_udp_open(namespace, target):
    """A UDP scan of every port: one probe each (nmap's protocol payloads where it has them,
    so a DNS, NTP or SNMP service would answer and show up as open)."""
    r = ns(namespace, ["nmap", "-Pn", "-n", "-sU", "-p-", "--max-retries", "0",
                       "--min-rate", "3000", "-oG", "-", target], timeout=900)
    return set(int(p) for p in re.findall(r"(\d+)/open/udp", r.stdout)), r.stdout


def listening(text):
    """(protocol, address, port, process) for every non-loopback socket `ss -lntup` lists."""
    found = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 5 or f[0] not in ("tcp", "udp"):
            continue
        addr, _, port = f[4].rpartition(":")
        addr = addr.strip("[]").split("%")[0]
        if addr.startswith("127.") or addr == "::1":
            continue
        proc = re.search(r'users:\(\("([^"]+)"', line)
        found.append((f[0], addr, int(port), proc.group(1) if proc else "?"))
    return found


def drop_counter(ruleset, name):
    m = re.search(r"counter " + name + r" \{\s*packets (\d+)", ruleset)
    return int(m.group(1)) if m else -1


def make_medium(bundle, path):
    """A vfat 'USB stick' labelled PGUPDATE holding one bundle."""
    size_mb = os.path.getsize(bundle) // 1048576 + 16
    if os.path.exists(path):
        os.unlink(path)
    sh(["mkfs.vfat", "-C", "-n", "PGUPDATE", path, str(size_mb * 1024)])
    sh(["mcopy", "-i", path, bundle, "::" + os.path.basename(bundle)])


def boot_wait(con, qemu, since, slot, what, timeout):
    """Waits for a boot of `slot` to reach the console menu; returns the seconds it took."""
    t = time.time()
    m = con.wait(rf"Plantgate appliance \S+\s+slot {slot}", timeout, since)
    ok = m is not None and con.wait_prompt(120)
    check(ok, f"{what}: boots slot {slot} to the console menu")
    if not ok:
        other = con.wait(r"slot ([AB])", 1, since)
        raise RuntimeError(f"{what}: no console on slot {slot}" + (f" (saw slot {other.group(1)})" if other else ""))
    return time.time() - t


def storage(con):
    """The console's `storage` report as numbers: disk, data partition and file system bytes,
    when the store was initialised, and its audit chain's records (-1 unless it verifies)."""
    rc, text = con.command("storage", 300)

    def num(rx):
        found = re.search(rx, text)
        return int(found.group(1)) if found else -1
    m = re.search(r"store initialised: (\S+)", text)
    return {
        "disk": num(r"disk: \S+ bytes=(\d+)"),
        "partition": num(r"data partition: \S+ bytes=(\d+)"),
        "fs": num(r"data file system: bytes=(\d+)"),
        "initialised": m.group(1) if m else None,
        "records": num(r"audit log intact: (\d+) records"),
        "rc": rc,
        "text": text,
    }


def wait_status(con, pattern, timeout):
    deadline = time.time() + timeout
    out = ""
    while time.time() < deadline:
        _, out = con.command("status", 60)
        if re.search(pattern, out):
            return True, out
        time.sleep(5)
    return False, out


class LynisGuest:
    """Lynis in a second guest of the same image, beside the main sequence. Under TCG the audit
    takes most of the test's time and is mostly one process at a time, while the main guest's
    checks are boots and waits: run side by side they share the host's cores instead of
    queueing. The second guest boots the factory image (slot A, the same root file system the
    update bundle carries) from its own overlay, its NICs on QEMU hubs that lead nowhere."""

    def __init__(self, qcow2, ovmf_code, ovmf_vars, accel):
        self.run = tempfile.mkdtemp(prefix="plantgate-image-lynis-")
        disk = os.path.join(self.run, "disk.qcow2")
        sh(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", os.path.abspath(qcow2), disk])
        self.started = time.time()
        self.result = None
        self.qemu = Qemu(disk, self.run, ovmf_code, ovmf_vars, accel, isolated=True)
        self.thread = threading.Thread(target=self._audit, daemon=True)
        self.thread.start()

    def _audit(self):
        try:
            con = Console(self.qemu.ser_path, os.path.join(self.run, "serial.log"))
            if not (con.wait(r"Plantgate appliance \S+\s+slot A", 900) and con.wait_prompt(300)):
                raise RuntimeError("the Lynis guest did not reach its console")
            booted = time.time()
            rc, text = con.command("lynis", 1900)
            self.result = (rc, text, booted - self.started, time.time() - booted)
        except Exception as err:  # noqa: BLE001 - reported by finish()
            self.result = err

    def finish(self):
        log("-- Lynis inside the image (second guest, started after the nmap checks)")
        t = time.time()
        self.thread.join(2400)
        waited = time.time() - t
        self.qemu.stop()
        if not isinstance(self.result, tuple):
            check(False, "Lynis ran in the second guest", repr(self.result))
            log(f"(Lynis run directory kept: {self.run})")
            return
        _, lynis, boot, audit = self.result
        m = re.search(r"hardening_index=(\d+)", lynis)
        index = int(m.group(1)) if m else -1
        figure(f"Lynis hardening index: {index} (floor {LYNIS_FLOOR}; the audit took {audit:.0f} s after a "
               f"{boot:.0f} s boot, beside the main checks; {waited:.0f} s of it waited for at the end)")
        log("    " + lynis.strip().replace("\n", "\n    "))
        check(index >= LYNIS_FLOOR, f"Lynis hardening index >= {LYNIS_FLOOR}", str(index))
        shutil.rmtree(self.run, ignore_errors=True)

    def stop(self):
        self.qemu.stop()


def tampered_boot_loader_is_refused(out, version, run, ovmf_code, ovmf_vars, accel):
    """A copy of the disk whose GRUB has one byte changed must not boot: shim refuses it."""
    log("-- Secure Boot: a disk whose GRUB was changed by one byte")
    raw = os.path.join(run, "tampered.raw")
    sh(["cp", "--sparse=always", f"{out}/plantgate-{version}.raw", raw])
    esp = f"{raw}@@1M"   # the ESP is the first partition, at 1 MiB (image/build)
    grub = os.path.join(run, "grubx64.efi")
    sh(["mcopy", "-n", "-i", esp, "::EFI/BOOT/grubx64.efi", grub])
    with open(grub, "r+b") as f:
        f.seek(os.path.getsize(grub) // 2)   # inside the signed code, far from the signature
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    sh(["mcopy", "-o", "-i", esp, grub, "::EFI/BOOT/grubx64.efi"])
    trun = tempfile.mkdtemp(prefix="plantgate-image-tampered-")
    qemu = Qemu(raw, trun, ovmf_code, ovmf_vars, accel, isolated=True)
    try:
        con = Console(qemu.ser_path, os.path.join(trun, "serial.log"))
        refused = con.wait(r"Verification failed|Security Violation", 300)
        booted = con.wait(r"Linux version|Plantgate appliance", 1)
        check(refused is not None and booted is None,
              "Secure Boot: shim refuses a changed GRUB, and no kernel starts",
              (refused.group(0) if refused else "no refusal in 300 s") + ("; a kernel started" if booted else ""))
    finally:
        qemu.stop()
        os.unlink(raw)
        shutil.rmtree(trun, ignore_errors=True)


def key_files_match_the_table(con):
    """The key files first boot made, as the console's `keys` lists them, against
    ARCHITECTURE.md's table (which a unit test holds against the code's)."""
    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "ARCHITECTURE.md")).read()
    section = text.split("## Keys: who reads what", 1)[1].split("\n## ", 1)[0]
    table = {m.group(1): (m.group(2), int(m.group(3), 8))
             for m in re.finditer(r"^\| `([^`]+)` \| (\S+) \| (\d+) \|", section, re.M)}
    rc, listing = con.command("keys")
    found = {}
    for line in listing.splitlines():
        m = re.match(r"/var/lib/plantgate/keys/(\S+) (\S+) ([0-7]+)$", line.strip())
        if m:
            found[m.group(1)] = (m.group(2), int(m.group(3), 8))
    check(rc == 0 and table and found == table,
          "first boot made exactly the key files of ARCHITECTURE.md's table, with its owners and modes",
          f"table {table} on the box {found}")
    check(re.search(r"^/var/lib/plantgate/keys root:plantgate 750$", listing, re.M) is not None,
          "the keys directory is root's, entered by the services' group only", listing)
    for directory in ("/var/lib/plantgate", "/var/lib/plantgate/firmware"):
        check(re.search(rf"^{directory} root:plantgate 2770$", listing, re.M) is not None,
              f"{directory} is the services' group's and keeps new files in it (setgid)", listing)


def kvm_probe(qcow2, ovmf_code, ovmf_vars):
    """Power-on to portal under KVM, where KVM works: a quick probe first (does the guest print
    anything on its serial port within 30 s?). On this project's build machine a KVM guest
    hung before printing anything, so the figures above are TCG's."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        figure("KVM: not available (/dev/kvm missing); TCG figures only")
        return
    run = tempfile.mkdtemp(prefix="plantgate-image-kvm-")
    disk = os.path.join(run, "disk.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", os.path.abspath(qcow2), disk])
    qemu = Qemu(disk, run, ovmf_code, ovmf_vars, "kvm")
    helpers = []
    try:
        time.sleep(1)
        if qemu.proc.poll() is not None:
            said = open(os.path.join(run, "qemu.log"), errors="replace").read().strip().splitlines()
            figure(f"KVM: QEMU refused to start with -accel kvm ({said[-1] if said else 'no message'}); TCG figures only")
            return
        helpers = setup_namespaces(run)
        con = Console(qemu.ser_path, os.path.join(run, "serial.log"))
        # Up to 30 s for the guest to print anything; a KVM failure QEMU reports (e.g. "KVM
        # internal error ... emulation failure", which stops the guest) ends the probe at once.
        qemu_log = os.path.join(run, "qemu.log")
        deadline = time.time() + 30
        while time.time() < deadline and qemu.proc.poll() is None:
            if con.wait(r"GRUB|Booting|Plantgate", 1):
                break
            failure = re.search(r"KVM internal error.*|failed to set MSR.*|emulation failure.*",
                                open(qemu_log, errors="replace").read())
            if failure:
                figure(f"KVM: {failure.group(0).strip()[:80]}; TCG figures only")
                return
        else:
            figure("KVM: the probe guest printed nothing in 30 s (KVM hangs here); TCG figures only")
            return
        deadline = time.time() + 300
        while time.time() < deadline and qemu.proc.poll() is None:
            con.pump(1)
            up, _ = curl_ok(UP_NS, f"https://{UP_BOX}/login", 3)
            if up:
                figure(f"power-on to portal answering (KVM): {time.time() - qemu.started:.0f} s")
                return
        figure("KVM: the guest started but the portal did not answer within 300 s")
    finally:
        qemu.stop()
        for p in helpers:
            p.terminate()
        teardown_namespaces()
        shutil.rmtree(run, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="image/out")
    ap.add_argument("--keep", action="store_true", help="leave the run directory")
    args = ap.parse_args()
    test_started = time.time()

    version = open("Cargo.toml").read().split('version = "', 1)[1].split('"', 1)[0]
    maj, mnr, pat = version.split(".")
    update_version = f"{maj}.{mnr}.{int(pat) + 1}"
    out = args.out
    qcow2 = f"{out}/plantgate-{version}.qcow2"
    good_bundle = f"{out}/plantgate-{update_version}.pgb"
    broken = glob.glob(f"{out}/plantgate-*-broken.pgb")

    log("-- image sizes")
    total_compressed = 0
    for ext in ("raw", "qcow2", "vmdk", "ova", "vhdx"):
        f = f"{out}/plantgate-{version}.{ext}"
        size = os.path.getsize(f)
        alloc = os.stat(f).st_blocks * 512
        figure(f"{os.path.basename(f)}: {size / 1048576:.0f} MiB (on disk {alloc / 1048576:.0f} MiB)")
        if ext in ("qcow2", "vmdk", "ova"):
            check(size < SIZE_LIMIT_MB * 1048576, f"{ext} (compressed) is under {SIZE_LIMIT_MB} MB",
                  f"{size / 1048576:.0f} MiB")
    figure(f"update bundle {os.path.basename(good_bundle)}: {os.path.getsize(good_bundle) / 1048576:.0f} MiB")
    ova_list = sh(["tar", "-tf", f"{out}/plantgate-{version}.ova"]).stdout.split()
    check(ova_list[0].endswith(".ovf"), "the OVA starts with its OVF descriptor", str(ova_list))
    ovf = sh(["tar", "-xOf", f"{out}/plantgate-{version}.ova", ova_list[0]]).stdout
    nics = re.findall(r"<rasd:Connection>(\w+)</rasd:Connection>", ovf)
    check(nics == ["uplink", "device"], "the OVF declares two NICs, uplink then device", str(nics))
    check('vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="true"' in ovf, "the OVF asks ESXi for UEFI Secure Boot")
    info = sh(["qemu-img", "info", f"{out}/plantgate-{version}.vmdk"]).stdout
    check("streamOptimized" in info, "the VMDK is streamOptimized")
    info = sh(["qemu-img", "info", f"{out}/plantgate-{version}.vhdx"]).stdout
    check("file format: vhdx" in info, "the VHDX is a VHDX")

    # OVMF with Secure Boot, and variables with Microsoft's keys enrolled (Debian's ovmf).
    ovmf_code = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    ovmf_vars = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
    for f in (ovmf_code, ovmf_vars):
        if not os.path.exists(f):
            check(False, f"OVMF with Secure Boot is installed ({f})")
            sys.exit(1)
    run = tempfile.mkdtemp(prefix="plantgate-image-test-")
    disk = os.path.join(run, "disk.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", os.path.abspath(qcow2), disk])
    accel = "tcg"
    log(f"-- booting {os.path.basename(qcow2)} (accel {accel}; run directory {run})")
    helpers = []
    lynis_guest = None
    qemu = Qemu(disk, run, ovmf_code, ovmf_vars, accel)
    try:
        time.sleep(1)
        helpers = setup_namespaces(run)
        con = Console(qemu.ser_path, os.path.join(run, "serial.log"))

        # ---- power-on to portal
        portal = f"https://{UP_BOX}/login"
        deadline = time.time() + 600
        up = False
        while time.time() < deadline and qemu.proc.poll() is None:
            con.pump(1)
            up, _ = curl_ok(UP_NS, portal, 3)
            if up:
                break
        check(up, "the portal answers HTTPS on uplink after power-on")
        if not up:
            # The box's own account of why, from its console, so a CI log says more than
            # "never answered".
            if qemu.proc.poll() is None and con.wait_prompt(120):
                _, errors = con.command("errors 80")
                log("-- the console's `errors` (the portal never answered)\n    "
                    + errors.strip().replace("\n", "\n    "))
            raise RuntimeError("portal never answered; serial log: " + os.path.join(run, "serial.log"))
        figure(f"power-on to portal answering (TCG): {time.time() - qemu.started:.0f} s")
        check(con.wait_prompt(180), "the console menu answers on the serial port")
        m = con.wait(r"First-admin enrolment token: (\S+)", 5)
        check(m is not None, "the console shows the first-admin enrolment token")
        enrolment_token = m.group(1) if m else ""
        m = con.wait(rf"Portal:\s+https://{re.escape(UP_BOX)}/", 5) or None
        if not m:
            _, st = con.command("status")
            m = re.search(rf"Portal:\s+https://{re.escape(UP_BOX)}/", st)
        check(m is not None, "the console shows the portal's address")
        m = con.wait(r"Secure Boot: (\S+) \(kernel lockdown: ([^)]*)\)", 5)
        check(m is not None and m.group(1) == "on" and m.group(2) == "integrity",
              "booted with Secure Boot on (shim, GRUB and kernel signed), the kernel locked down",
              m.group(0) if m else "no Secure Boot line on the console")

        # ---- which side answers what
        log("-- services by side")
        ok, detail = curl_ok(UP_NS, f"https://{UP_BOX}/setup")
        check(ok and detail == "200", "portal: first-run page, HTTPS 200 on uplink", detail)
        ok, detail = curl_ok(DEV_NS, f"https://{DEV_BOX}/login")
        check(not ok, "portal: nothing on device", detail)
        ok, detail = curl_ok(DEV_NS, f"https://{DEV_BOX}:8443/healthz")
        check(ok and detail == "200", "ingest: HTTPS 200 on device", detail)
        ok, detail = curl_ok(UP_NS, f"https://{UP_BOX}:8443/healthz")
        check(not ok, "ingest: nothing on uplink", detail)
        r = ns(UP_NS, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "--max-time", "5", f"http://{UP_BOX}/"])
        check(r.stdout.startswith("30") and "https://" in r.stdout, "portal: plain HTTP on uplink only redirects to HTTPS", r.stdout)

        rc, lookup = con.command(f"network lookup {MAIL_NAME}")
        check(rc == 0 and f"{MAIL_NAME} has address {UP_HOST}" in lookup,
              "names resolve through the uplink's DNS (systemd-resolved; as the mail relay's would)", lookup)

        # ---- the first day: setup, mail relay, remote access, telemetry, certificate, audit,
        # as people do them in the portal (journeys.py); the SMTP server answers for MAIL_NAME.
        sides = {"uplink": UP_NS, "device": DEV_NS}
        journeys.run(journeys.Context(
            portal=f"https://{UP_BOX}", ingest_host=DEV_BOX, ingest_https_port=8443, ingest_mqtt_port=8883,
            token=enrolment_token, on=lambda side, argv: ["ip", "netns", "exec", sides[side]] + argv,
            console=con, check=check, figure=figure, mail_listen=(UP_HOST, 25), mail_relay=(MAIL_NAME, 25),
            machine=(DEV_HOST, 4840), run_dir=run, log=log))
        # What the services logged meanwhile (the console's `errors`), shown whatever happened,
        # so that a failed step above comes with the box's own account of it.
        _, errors = con.command("errors 60")
        log("-- the console's `errors` after the journeys\n    " + errors.strip().replace("\n", "\n    "))
        key_files_match_the_table(con)

        log("-- nmap -p- from each side (TCP)")
        t = time.time()
        ports = nmap_open(UP_NS, UP_BOX)
        check(ports == UPLINK_PORTS, f"uplink: open TCP ports are exactly {sorted(UPLINK_PORTS)}", str(sorted(ports)))
        ports = nmap_open(DEV_NS, DEV_BOX)
        check(ports == DEVICE_PORTS, f"device: open TCP ports are exactly {sorted(DEVICE_PORTS)}", str(sorted(ports)))
        figure(f"nmap -p- both sides: {time.time() - t:.0f} s")

        log("-- nmap -sU -p- from each side (UDP), and the sockets inside")
        t = time.time()
        for side, namespace, target in (("uplink", UP_NS, UP_BOX), ("device", DEV_NS, DEV_BOX)):
            _, before = con.command("firewall")
            ports, scan = nmap_udp_open(namespace, target)
            _, after = con.command("firewall")
            check(ports == set(), f"{side}: no UDP port answers", str(sorted(ports)) or scan[-500:])
            counter = f"drop_input_{side}"
            rose = drop_counter(after, counter) - drop_counter(before, counter)
            check(drop_counter(before, counter) >= 0 and rose >= 65535 // 2,
                  f"{side}: the UDP probes reached the appliance and were dropped ({counter} rose by {rose})",
                  f"{drop_counter(before, counter)} -> {drop_counter(after, counter)}")
        figure(f"nmap -sU -p- both sides: {time.time() - t:.0f} s")
        rc, text = con.command("sockets")
        sockets = listening(text)
        log("    " + "\n    ".join(f"{p} {a}:{n} {who}" for p, a, n, who in sockets))
        tcp = {n for p, _, n, _ in sockets if p == "tcp"}
        udp = {n for p, _, n, _ in sockets if p == "udp"}
        check(rc == 0 and tcp <= UPLINK_PORTS | DEVICE_PORTS,
              "inside, nothing listens on TCP off loopback but the portal and the ingest", str(sorted(tcp)))
        check(rc == 0 and udp <= UDP_SOCKETS,
              f"inside, no UDP socket is open off loopback but {sorted(UDP_SOCKETS)} (DHCP client)", str(sorted(udp)))

        log("-- forwarding")
        _, before = con.command("firewall")
        r = ns(UP_NS, ["python3", "-c", f"import socket;socket.create_connection(('{DEV_HOST}',102),timeout=5).recv(3)"])
        check(r.returncode != 0, "uplink host cannot reach the PLC (tcp/102) without a grant")
        r = ns(DEV_NS, ["curl", "-s", "--max-time", "5", "-o", "/dev/null", f"http://{UP_HOST}:9/"])
        check(r.returncode != 0, "device host cannot reach the uplink network")
        _, after = con.command("firewall")

        def drops(text):
            m = re.search(r'counter drop_forward \{\s*packets (\d+)', text)
            return int(m.group(1)) if m else -1
        check(drops(after) > drops(before) >= 0,
              "the attempts reached the forward chain and were dropped (drop_forward counter rose)",
              f"{drops(before)} -> {drops(after)}")
        check("policy drop" in after and re.search(r"chain forward \{[^}]*policy drop", after) is not None,
              "forward chain policy is drop")

        # Lynis: in a second guest from here on (see LynisGuest); its result is collected at
        # the end. Started after nmap, so that the scans meet an unloaded host.
        lynis_guest = LynisGuest(qcow2, ovmf_code, ovmf_vars, accel)

        log("-- processes, users and capabilities (/proc/<pid>/status via the console)")
        _, procs = con.command("processes")
        log("    " + procs.strip().replace("\n", "\n    "))
        expect = {
            "plantgate-firewall": ("plantgate-fw", "0000000000001000"),
            "plantgate-web": ("plantgate-web", "0000000000000000"),
            "plantgate-ingest": ("plantgate-ingest", "0000000000000000"),
        }
        for unit, (user, caps) in expect.items():
            line = next((l for l in procs.splitlines() if l.startswith(unit + ":")), "")
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            check(fields.get("user") == user, f"{unit} runs as {user}", line)
            got = {k.rstrip(":"): v for k, v in re.findall(r"(Cap\w+:|NoNewPrivs:|Seccomp:)=(\S+)", line)}
            check(got.get("CapEff") == caps and got.get("CapPrm") == caps and got.get("CapBnd") == caps,
                  f"{unit}: effective, permitted and bounding capabilities are {'CAP_NET_ADMIN only' if caps != '0000000000000000' else 'none'}",
                  line)
            check(got.get("NoNewPrivs") == "1" and got.get("Seccomp") == "2", f"{unit}: no_new_privs and a seccomp filter", line)

        log("-- root file system")
        rc, mounts = con.command("mounts")
        check(rc == 0 and "root file system: read-only" in mounts and re.search(r"^/\s+\S+\s+squashfs\s+ro", mounts, re.M) is not None,
              "root file system is read-only (squashfs, ro)", mounts)
        check("/var/lib/plantgate" in mounts, "the store is on the data partition", mounts)

        # ---- A/B update, end to end
        log("-- A/B update: good bundle into slot B")
        medium = os.path.join(run, "good.img")
        make_medium(good_bundle, medium)
        qemu.monitor(f"drive_add 0 if=none,id=upd1,format=raw,readonly=on,file={medium}")
        qemu.monitor("device_add virtio-blk-pci,drive=upd1,id=upddev1,bus=hp1")
        time.sleep(5)
        t = time.time()
        rc, text = con.command("update", 1800)
        figure(f"update install into slot B: {time.time() - t:.0f} s")
        check(rc == 0, "the signed bundle installs into the other slot", text[-2000:])
        qemu.monitor("device_del upddev1")

        # ---- the data partition grows into an enlarged disk (as after enlarging the virtual
        # disk in ESXi or Hyper-V): power off, qemu-img resize +1 GiB, power on.
        log("-- data partition: power off, enlarge the disk by 1 GiB, power on (into slot B)")
        before = storage(con)
        check(before["rc"] == 0 and before["fs"] > 0 and before["initialised"] not in (None, "never"),
              "storage: the data partition, its file system and the store are reported", before["text"])
        con.send("poweroff")
        try:
            qemu.proc.wait(300)
        except subprocess.TimeoutExpired:
            pass
        check(qemu.proc.poll() is not None, "the appliance powers off from its console")
        qemu.stop()
        sh(["qemu-img", "resize", "-q", disk, "+1G"])
        for p in helpers:
            p.terminate()
        for f in (qemu.mon_path, qemu.ser_path):
            if os.path.exists(f):
                os.unlink(f)
        qemu = Qemu(disk, run, ovmf_code, ovmf_vars, accel)
        time.sleep(1)
        helpers = setup_namespaces(run)
        con = Console(qemu.ser_path, os.path.join(run, "serial.log"))
        took = boot_wait(con, qemu, 0, "B", "after the update and the disk resize", 900)
        figure(f"power-on into slot B to console (after the update, disk +1 GiB): {took:.0f} s")
        after = storage(con)
        log("    " + after["text"].strip().replace("\n", "\n    "))
        gib = 1 << 30
        check(after["disk"] - before["disk"] == gib, "the guest sees the disk 1 GiB larger",
              f"{before['disk']} -> {after['disk']}")
        check(after["partition"] >= before["partition"] + gib - (4 << 20),
              "the data partition grew to the end of the enlarged disk",
              f"{before['partition']} -> {after['partition']} bytes")
        # ext4's own metadata takes its share of the new space (the data file system was made
        # with mkfs's small-fs defaults: 1 KiB blocks, an inode per 4 KiB, about 6 %).
        check(after["fs"] >= before["fs"] + gib * 0.85,
              "the file system on /var/lib/plantgate grew with it (online, x-systemd.growfs)",
              f"{before['fs']} -> {after['fs']} bytes")
        check(after["initialised"] == before["initialised"] and after["rc"] == 0
              and 0 < before["records"] <= after["records"],
              "the store written before is intact (the same store; its audit chain, "
              f"{before['records']} records before, verifies with {after['records']})", after["text"])
        figure(f"data file system: {before['fs'] / 1048576:.0f} MiB -> {after['fs'] / 1048576:.0f} MiB "
               f"after the disk grew by 1 GiB")
        ok, st = wait_status(con, r"slot B: [^\n]*? version=" + re.escape(update_version) + r" \(security 1\) ok=true good=true", 300)
        check(ok, f"slot B runs {update_version} and is marked good", st)
        ok, _ = curl_ok(UP_NS, portal, 10)
        check(ok, "the portal answers after the update")

        if not broken:
            check(False, "a broken bundle for the fallback test exists (image/build --broken-bundle)")
        else:
            log("-- A/B update: broken bundle (portal cannot start) into slot A falls back")
            medium = os.path.join(run, "broken.img")
            make_medium(broken[0], medium)
            qemu.monitor(f"drive_add 0 if=none,id=upd2,format=raw,readonly=on,file={medium}")
            qemu.monitor("device_add virtio-blk-pci,drive=upd2,id=upddev2,bus=hp2")
            time.sleep(5)
            rc, text = con.command("update", 1800)
            check(rc == 0, "the broken (but signed) bundle installs into slot A", text[-2000:])
            qemu.monitor("device_del upddev2")
            since = con.mark()
            con.send("reboot")
            m = con.wait(r"Plantgate appliance \S+\s+slot A", 900, since)
            check(m is not None, "the broken slot A is tried once")
            m = con.wait(r"failed its trial boot; rebooting to fall back", 600, since)
            check(m is not None, "its health check fails and it reboots")
            took = boot_wait(con, qemu, con.mark() if m is None else m.end(), "B", "after the failed trial", 900)
            ok, st = wait_status(con, r"booted slot: B[\s\S]*slot A: [^\n]*? version=- ok=false good=false[\s\S]*slot B: [^\n]*? version=" + re.escape(update_version) + r" \(security 1\) ok=true good=true", 300)
            check(ok, "back on slot B (good), slot A marked failed", st)
            ok, _ = curl_ok(UP_NS, portal, 10)
            check(ok, "the portal answers after the fallback")
        qemu.stop()
        tampered_boot_loader_is_refused(out, version, run, ovmf_code, ovmf_vars, accel)
        if lynis_guest:
            lynis_guest.finish()
    except Exception as err:  # noqa: BLE001 - every failure is reported, never swallowed
        check(False, "the image test ran to the end", repr(err))
    finally:
        qemu.stop()
        if lynis_guest:
            lynis_guest.stop()
        for p in helpers:
            p.terminate()
        teardown_namespaces()
        if failures or args.keep:
            log(f"(run directory kept: {run})")
        else:
            shutil.rmtree(run, ignore_errors=True)

    kvm_probe(qcow2, ovmf_code, ovmf_vars)
    figure(f"boot test (all of the above) took {time.time() - test_started:.0f} s")

    log("\n-- figures")
    for f in figures:
        log(f"  {f}")
    if failures:
        log(f"\nIMAGE TEST FAILED ({len(failures)}):")
        for f in failures:
            log(f"  - {f}")
        sys.exit(1)
    log("\nimage test: all checks passed")


if __name__ == "__main__":
    main()
