SUMMARY = "Plantgate appliance image"
DESCRIPTION = "The hardened Plantgate appliance: read-only squashfs root in A/B slots, the \
               store on a data partition, no passwords and no network login, nftables closed at boot. \
               Disks for ESXi (streamOptimized VMDK in an OVA with two NICs), Hyper-V (VHDX, Gen 2 UEFI) \
               and QEMU (qcow2)."
SECTION = "images"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile - the sources are this layer\'s own files
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://plantgate.ovf.in"

inherit core-image extrausers

IMAGE_FEATURES += "read-only-rootfs"
IMAGE_FEATURES:remove = "debug-tweaks allow-empty-password empty-root-password allow-root-login post-install-logging"
IMAGE_LINGUAS = ""
IMAGE_INSTALL = "packagegroup-core-boot kernel-image-bzimage kernel-modules plantgate plantgate-doc plantgate-system lynis"
# No password for root, no other login: the console runs the Plantgate menu instead of getty.
EXTRA_USERS_PARAMS = "usermod -p '!*' root;"

IMAGE_FSTYPES = "wic.vmdk wic.vhdx wic.qcow2"
WKS_FILE = "plantgate-ab.wks.in"
WKS_FILE_DEPENDS:append = " squashfs-tools-native dosfstools-native mtools-native grub-native"

# The kernel at the path updater/grub.cfg boots, and the GRUB configuration made from it.
plantgate_rootfs_fixups() {
    ln -sf bzImage ${IMAGE_ROOTFS}/boot/vmlinuz
    : >${IMAGE_ROOTFS}${sysconfdir}/machine-id
    install -m 0644 ${IMAGE_ROOTFS}${datadir}/plantgate/fstab ${IMAGE_ROOTFS}${sysconfdir}/fstab
}
ROOTFS_POSTPROCESS_COMMAND += "plantgate_rootfs_fixups"

do_plantgate_boot_files[doc] = "Writes the ESP's grub.cfg from updater/grub.cfg and the factory grubenv"
do_plantgate_boot_files() {
    ${PLANTGATE_SRCDIR}/image/meta-plantgate/scripts/plantgate-grub-cfg \
        ${PLANTGATE_SRCDIR}/updater/grub.cfg >${DEPLOY_DIR_IMAGE}/plantgate-grub.cfg
    rm -rf ${IMAGE_ROOTFS}/../plantgate-grubenv
    install -d ${IMAGE_ROOTFS}/../plantgate-grubenv
    grub-editenv ${IMAGE_ROOTFS}/../plantgate-grubenv/grubenv create
    grub-editenv ${IMAGE_ROOTFS}/../plantgate-grubenv/grubenv set "PG_ORDER=A B" \
        PG_A_OK=1 PG_A_GOOD=1 PG_A_TRIES=0 PG_B_OK=0 PG_B_GOOD=0 PG_B_TRIES=0
}
addtask plantgate_boot_files after do_rootfs before do_image_wic
do_plantgate_boot_files[depends] += "grub-native:do_populate_sysroot"

# The OVA: OVF descriptor (two NICs: uplink, device), manifest, and the disk as a
# streamOptimized VMDK (the only kind ESXi imports from an OVA). Secure Boot off: this
# build's GRUB is not signed (the offline build's boot chain is, and its OVA turns it on).
do_plantgate_ova[doc] = "Packs the OVA for ESXi: OVF with two NICs, manifest, streamOptimized VMDK"
do_plantgate_ova() {
    cd ${IMGDEPLOYDIR}
    vmdk=${IMAGE_NAME}${IMAGE_NAME_SUFFIX}.stream.vmdk
    qemu-img convert -O vmdk -o subformat=streamOptimized ${IMAGE_NAME}${IMAGE_NAME_SUFFIX}.wic $vmdk
    raw_size=$(stat -c %s ${IMAGE_NAME}${IMAGE_NAME_SUFFIX}.wic)
    sed -e "s/@VERSION@/${DISTRO_VERSION}/g" -e "s/@VMDK@/$vmdk/g" \
        -e "s/@VMDK_SIZE@/$(stat -c %s $vmdk)/g" -e "s/@CAPACITY@/$raw_size/g" \
        -e "s/@SECURE_BOOT@/false/g" \
        ${WORKDIR}/plantgate.ovf.in >${IMAGE_NAME}.ovf
    echo "SHA256(${IMAGE_NAME}.ovf)= $(sha256sum ${IMAGE_NAME}.ovf | cut -d' ' -f1)" >${IMAGE_NAME}.mf
    echo "SHA256($vmdk)= $(sha256sum $vmdk | cut -d' ' -f1)" >>${IMAGE_NAME}.mf
    tar --format=ustar -cf ${IMAGE_NAME}.ova ${IMAGE_NAME}.ovf ${IMAGE_NAME}.mf $vmdk
}
addtask plantgate_ova after do_image_wic before do_image_complete
