SUMMARY = "Plantgate appliance system integration"
DESCRIPTION = "Kernel hardening (sysctl), the fail-closed nftables boot ruleset, the first-boot \
               preparation (store, signing key, enrolment token), network configuration for the uplink and \
               device NICs, name resolution without LLMNR or mDNS, the local console menu, the volatile \
               journal, and growing the data partition into an enlarged disk (systemd-repart)."
# Placeholder (RFC 2606 domain) until the project has a public homepage; not pinged.
# nooelint: oelint.vars.homepageping
HOMEPAGE = "https://plantgate.example/"
SECTION = "base"
CVE_PRODUCT = "plantgate"
LICENSE = "Apache-2.0"
# nooelint: oelint.var.licenseremotefile - the sources are this layer\'s own files
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

SRC_URI = "file://90-plantgate-hardening.conf \
           file://plantgate-boot.nft \
           file://plantgate-firstboot \
           file://plantgate-firstboot.service \
           file://plantgate-network \
           file://plantgate-network.service \
           file://plantgate-console \
           file://plantgate-console@.service \
           file://journald-plantgate.conf \
           file://resolved-plantgate.conf \
           file://plantgate.fstab \
           file://lynis-plantgate.prf \
           file://repart-20-grubenv.conf \
           file://repart-50-data.conf \
           "

S = "${WORKDIR}"

inherit allarch systemd

do_install() {
    install -d ${D}${libdir}/sysctl.d ${D}${sysconfdir} ${D}${libexecdir}/plantgate \
        ${D}${systemd_system_unitdir} ${D}${sysconfdir}/systemd/journald.conf.d \
        ${D}${localstatedir}/lib/plantgate ${D}/boot/env
    install -m 0644 ${S}/90-plantgate-hardening.conf ${D}${libdir}/sysctl.d/
    install -m 0755 ${S}/plantgate-boot.nft ${D}${sysconfdir}/nftables.conf
    install -m 0755 ${S}/plantgate-firstboot ${S}/plantgate-network ${S}/plantgate-console \
        ${D}${libexecdir}/plantgate/
    install -m 0644 ${S}/plantgate-firstboot.service ${S}/plantgate-network.service \
        ${S}/plantgate-console@.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/journald-plantgate.conf ${D}${sysconfdir}/systemd/journald.conf.d/plantgate.conf
    install -d ${D}${sysconfdir}/systemd/resolved.conf.d
    install -m 0644 ${S}/resolved-plantgate.conf ${D}${sysconfdir}/systemd/resolved.conf.d/plantgate.conf
    # The image installs it as /etc/fstab (plantgate-image.bb): base-files owns that path.
    install -d ${D}${datadir}/plantgate
    install -m 0644 ${S}/plantgate.fstab ${D}${datadir}/plantgate/fstab
    install -d ${D}${sysconfdir}/lynis
    install -m 0644 ${S}/lynis-plantgate.prf ${D}${sysconfdir}/lynis/custom.prf
    # systemd-repart grows the data partition into an enlarged disk (kas/plantgate.yml
    # enables systemd's repart); x-systemd.growfs in the fstab grows its file system.
    install -d ${D}${nonarch_libdir}/repart.d
    install -m 0644 ${S}/repart-20-grubenv.conf ${D}${nonarch_libdir}/repart.d/20-grubenv.conf
    install -m 0644 ${S}/repart-50-data.conf ${D}${nonarch_libdir}/repart.d/50-data.conf
}

SYSTEMD_SERVICE:${PN} = "plantgate-firstboot.service plantgate-network.service \
                         plantgate-console@tty1.service plantgate-console@ttyS0.service"

FILES:${PN} += "${sysconfdir}/lynis ${nonarch_libdir}/repart.d ${datadir}/plantgate ${libdir}/sysctl.d ${libexecdir}/plantgate ${localstatedir}/lib/plantgate /boot/env"
CONFFILES:${PN} = "${sysconfdir}/nftables.conf"
# glibc-utils: getent, for the console's `network lookup` (what the services' resolver sees).
RDEPENDS:${PN} = "glibc-utils iproute2 libcap-bin nftables openssl-bin procps systemd util-linux-findmnt util-linux-mount"
