SUMMARY = "Lynis security auditing tool"
DESCRIPTION = "Lynis audits the booted appliance and reports its hardening index. The same \
               version as the offline (Debian bookworm) build's, so both images are scored by \
               the same tests; the layer's lynis-plantgate.prf is its profile."
HOMEPAGE = "https://cisofy.com/lynis/"
SECTION = "console/utils"
CVE_PRODUCT = "cisofy:lynis"
LICENSE = "GPL-3.0-only"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3edd6782854304fd11da4975ab9799c1"

# The upstream release tarball. Its checksum is the one Debian's lynis_3.0.8-1.1.dsc records
# for lynis_3.0.8.orig.tar.gz, which Debian ships with upstream's signature (.asc), so it
# is byte for byte the upstream release.
SRC_URI = "https://downloads.cisofy.com/lynis/${BPN}-${PV}.tar.gz"
SRC_URI[sha256sum] = "98373a4cc9d0471ab9bebb249e442fcf94b6bf6d4e9c6fc0b22bca1506646c63"

S = "${WORKDIR}/${BPN}"

# A shell script and its data: nothing to configure or compile.
do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${bindir} ${D}${sysconfdir}/lynis ${D}${datadir}/lynis
    install -m 0755 ${S}/lynis ${D}${bindir}/lynis
    install -m 0644 ${S}/default.prf ${D}${sysconfdir}/lynis/default.prf
    for dir in db include plugins extras; do
        cp -R --no-dereference --preserve=mode,links ${S}/$dir ${D}${datadir}/lynis/
    done
}

RDEPENDS:${PN} = "bash findutils procps"
