# The root file system drivers built in, for booting without an initramfs (the plantgate
# distro only).
FILESEXTRAPATHS:prepend:plantgate := "${THISDIR}/files:"
SRC_URI:append:plantgate = " file://plantgate-root.cfg"
