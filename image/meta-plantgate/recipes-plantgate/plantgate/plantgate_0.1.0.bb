SUMMARY = "Plantgate appliance services"
DESCRIPTION = "The Plantgate portal (plantgate-web), telemetry ingest (plantgate-ingest), \
               firewall controller (plantgate-firewall), A/B updater (plantgate-updater) and the \
               administration command (plantgate), with their systemd units and users."
# Placeholder (RFC 2606 domain) until the project has a public homepage; not pinged.
# nooelint: oelint.vars.homepageping
HOMEPAGE = "https://plantgate.example/"
SECTION = "net"
CVE_PRODUCT = "plantgate"
LICENSE = "Apache-2.0"
# The workspace declares its licence in Cargo.toml ([workspace.package] license).
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=9;endline=9;md5=2507bd5f0713f05419cd2f22fa06fe62"

DEPENDS += "openssl"

PV .= "+git"

# The workspace this layer lives in (PLANTGATE_SRCDIR, see conf/layer.conf), at its
# checked-out commit. Every crate comes from plantgate-crates.inc (generated from Cargo.lock),
# so cargo runs with --frozen and fetches nothing while compiling.
SRC_URI = "git://${PLANTGATE_SRCDIR};protocol=file;branch=main \
           file://plantgate-web.service \
           file://plantgate-ingest.service \
           file://plantgate-firewall.service \
           file://plantgate-health.service \
           file://plantgate-health \
           file://plantgate.toml \
           file://plantgate.sysusers \
           file://updater.toml.in \
           "
SRCREV = "${PLANTGATE_SRCREV}"

S = "${WORKDIR}/git"

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates pkgconfig systemd useradd

# openssl-sys links Yocto's OpenSSL, so security fixes come with the OS.
export OPENSSL_NO_VENDOR = "1"
CARGO_BUILD_FLAGS:append = " --workspace --bins"

do_install:append() {
    install -d ${D}${systemd_system_unitdir} ${D}${libexecdir}/plantgate ${D}${sysconfdir}/plantgate \
        ${D}${sysusersdir} ${D}${datadir}/plantgate
    install -m 0644 ${WORKDIR}/plantgate-web.service ${WORKDIR}/plantgate-ingest.service \
        ${WORKDIR}/plantgate-firewall.service ${WORKDIR}/plantgate-health.service \
        ${D}${systemd_system_unitdir}/
    install -m 0755 ${WORKDIR}/plantgate-health ${D}${libexecdir}/plantgate/
    install -m 0644 ${WORKDIR}/plantgate.toml ${D}${sysconfdir}/plantgate/plantgate.toml
    sed -e 's/@VERSION@/${PV}/' ${WORKDIR}/updater.toml.in >${D}${sysconfdir}/plantgate/updater.toml
    install -m 0644 ${WORKDIR}/plantgate.sysusers ${D}${sysusersdir}/plantgate.conf
    echo "${PV}" >${D}${datadir}/plantgate/version
    # The documentation the units' Documentation= points to (packaged as ${PN}-doc).
    install -d ${D}${docdir}/plantgate/docs ${D}${docdir}/plantgate/updater
    install -m 0644 ${S}/README.md ${S}/ARCHITECTURE.md ${D}${docdir}/plantgate/
    install -m 0644 ${S}/updater/FORMAT.md ${D}${docdir}/plantgate/updater/
    install -m 0644 ${S}/docs/*.md ${D}${docdir}/plantgate/docs/
}

# One user per service, all in the group that shares the store (as plantgate.sysusers).
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system --gid 800 plantgate; --system --gid 804 plantgate-mail"
USERADD_PARAM:${PN} = "--system --uid 801 --gid plantgate --home-dir /nonexistent --no-create-home --shell /sbin/nologin plantgate-web; \
                       --system --uid 802 --gid plantgate --home-dir /nonexistent --no-create-home --shell /sbin/nologin plantgate-ingest; \
                       --system --uid 803 --gid plantgate --home-dir /nonexistent --no-create-home --shell /sbin/nologin plantgate-fw"

SYSTEMD_SERVICE:${PN} = "plantgate-firewall.service plantgate-web.service plantgate-ingest.service plantgate-health.service"

FILES:${PN} += "${sysusersdir} ${libexecdir}/plantgate"
CONFFILES:${PN} = "${sysconfdir}/plantgate/plantgate.toml ${sysconfdir}/plantgate/updater.toml"
RDEPENDS:${PN} = "conntrack-tools curl nftables openssl-bin plantgate-system"
