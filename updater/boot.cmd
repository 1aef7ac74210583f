# Plantgate A/B slot selection for U-Boot: the same logic as updater/grub.cfg, which
# updater/src/bootenv.rs `simulate_boot` mirrors in tests (this script itself is not run by
# the test suite). A slot boots when PG_X_OK=1 and it is either PG_X_GOOD=1 or has trial
# boots left (PG_X_TRIES 3..1), which are counted down here and saved before booting.
# Build the boot script with: mkimage -A arm64 -O linux -T script -C none -d boot.cmd boot.scr
# Board-specific: pg_load (loads kernel, device tree and initrd for ${pg_boot} into memory)
# and pg_bootm (boots them), set in the board's default environment.
if test -z "${PG_ORDER}"; then setenv PG_ORDER "A B"; fi
setenv pg_boot
setenv pg_save
for pg_slot in ${PG_ORDER}; do
    if test -z "${pg_boot}" && test "${pg_slot}" = A && test "${PG_A_OK}" = 1; then
        if test "${PG_A_GOOD}" = 1; then setenv pg_boot A
        elif test "${PG_A_TRIES}" = 3; then setenv PG_A_TRIES 2; setenv pg_boot A; setenv pg_save 1
        elif test "${PG_A_TRIES}" = 2; then setenv PG_A_TRIES 1; setenv pg_boot A; setenv pg_save 1
        elif test "${PG_A_TRIES}" = 1; then setenv PG_A_TRIES 0; setenv pg_boot A; setenv pg_save 1
        fi
    fi
    if test -z "${pg_boot}" && test "${pg_slot}" = B && test "${PG_B_OK}" = 1; then
        if test "${PG_B_GOOD}" = 1; then setenv pg_boot B
        elif test "${PG_B_TRIES}" = 3; then setenv PG_B_TRIES 2; setenv pg_boot B; setenv pg_save 1
        elif test "${PG_B_TRIES}" = 2; then setenv PG_B_TRIES 1; setenv pg_boot B; setenv pg_save 1
        elif test "${PG_B_TRIES}" = 1; then setenv PG_B_TRIES 0; setenv pg_boot B; setenv pg_save 1
        fi
    fi
done
# Nothing bootable: slot A is the last resort.
if test -z "${pg_boot}"; then setenv pg_boot A; fi
# The counted-down try must be on flash before the kernel runs, or a crash would retry for
# ever. Only then, so that a good slot's boots do not wear the flash.
if test -n "${pg_save}"; then setenv pg_save; setenv pg_slot; saveenv; fi
setenv bootargs "${bootargs} root=PARTLABEL=rootfs-${pg_boot} ro plantgate.slot=${pg_boot}"
run pg_load
run pg_bootm
