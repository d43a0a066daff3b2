#!/usr/bin/env bash
# The Debian package, end to end on this machine (root only): build it with
# dpkg-buildpackage (nocheck: the test suite runs separately), lintian without
# errors, install it, run the demo flow against the installed module through
# p11-kit-proxy.so, set up the system keystore as p11mk-server(8) says and
# sign through the installed unit's server as a member of the group p11mk,
# upgrade to a rebuilt package with a higher version (keystore, key file and
# the admin's edit of a conffile kept), remove, purge (only what the package
# made goes), and purge once more with nothing made by the admin (then
# /var/lib/p11mk goes too).
#
#   tests/package/test_package.sh [CHECKOUT]
#
# It refuses to run where p11mk is installed, or /var/lib/p11mk or /etc/p11mk
# exists: it would take them for its own. At the end it removes what its
# admin steps made and the user and group the package created, leaving the
# machine as it found it.
set -euo pipefail
src=$(cd "${1:-$(dirname "$0")/../..}" && pwd)

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }
passed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }

[ "$(id -u)" -eq 0 ] || skip "the package test installs a package: it needs root"
for t in dpkg-buildpackage dh lintian setpriv runuser pkcs11-tool openssl systemd-analyze; do
    command -v $t >/dev/null || skip "$t is not installed (tools/install-deps --package)"
done
if dpkg-query -W -f='${Status}' p11mk 2>/dev/null | grep >/dev/null installed; then
    skip "p11mk is installed on this machine; the test installs, upgrades and purges its own build"
fi
[ -e /var/lib/p11mk ] && skip "/var/lib/p11mk exists; the test would take it for the package's"
[ -e /etc/p11mk ] && skip "/etc/p11mk exists; the test would take it for the package's"
had_user=$(getent passwd _p11mk >/dev/null && echo yes || true)
had_group=$(getent group p11mk >/dev/null && echo yes || true)

W=$(mktemp -d /tmp/p11mk-pkg-XXXXXX)
chmod 755 "$W"
SRV_PG=
finish() {
    local rc=$?
    [ -n "$SRV_PG" ] && kill -TERM -- "-$SRV_PG" 2>/dev/null
    if [ $rc -ne 0 ]; then
        for f in "$W"/*.log "$W"/server.out; do [ -s "$f" ] && { echo "--- $f:"; tail -n 30 "$f"; }; done
    fi
    dpkg -P p11mk >/dev/null 2>&1 || true
    # What this test's admin steps made, then what the package's postinst made.
    rm -rf /var/lib/p11mk /etc/p11mk
    [ -z "$had_user" ] && getent passwd _p11mk >/dev/null && deluser --system --quiet _p11mk >/dev/null 2>&1
    [ -z "$had_group" ] && getent group p11mk >/dev/null && delgroup --system --quiet p11mk
    getent group _p11mk >/dev/null && [ -z "$had_user" ] && delgroup --system --quiet _p11mk
    rm -rf "$W"
    exit $rc
}
trap finish EXIT

# ---- build two versions ----------------------------------------------------------
version=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)
upversion="$version+pkgtest1"
build() { # dir
    mkdir -p "$1/src"
    tar -C "$src" --exclude='./build*' --exclude=./.git --exclude='./obj-*' -cf - . | tar -C "$1/src" -xf -
}
build "$W/v1"
build "$W/v2"
# The upgrade: the same source under a higher version, as a new changelog entry.
{
    printf 'p11mk (%s) unstable; urgency=medium\n\n  * Rebuilt by tests/package/test_package.sh to test the upgrade.\n\n' "$upversion"
    printf ' -- %s  %s\n\n' "$(dpkg-parsechangelog -l "$src/debian/changelog" -S Maintainer)" "$(date -R)"
    cat "$src/debian/changelog"
} > "$W/v2/src/debian/changelog"
for v in v1 v2; do
    (cd "$W/$v/src" && DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" dpkg-buildpackage -us -uc -b) > "$W/build-$v.log" 2>&1 </dev/null \
        || fail "dpkg-buildpackage ($v) failed"
done
DEB1=$W/v1/p11mk_${version}_$(dpkg --print-architecture).deb
DEB2=$W/v2/p11mk_${upversion}_$(dpkg --print-architecture).deb
[ -f "$DEB1" ] && [ -f "$DEB2" ] || fail "the packages were not built: $(ls "$W"/v1 "$W"/v2)"
ok "dpkg-buildpackage -us -uc -b builds $version and $upversion"

lintian --pedantic -I "$W/v1/"*.changes > "$W/lintian.log" 2>&1 </dev/null || true
grep -v '^running with root privileges' "$W/lintian.log" | sed 's/^/  lintian: /' || true
grep -q '^E: ' "$W/lintian.log" && fail "lintian reports errors"
ok "lintian: no error ($(grep -c '^W: ' "$W/lintian.log" || true) warnings, $(grep -c '^I: ' "$W/lintian.log" || true) notes)"

# ---- install ---------------------------------------------------------------------
dpkg -i "$DEB1" > "$W/install.log" 2>&1 </dev/null || fail "dpkg -i $DEB1"
getent passwd _p11mk | grep >/dev/null ':/var/lib/p11mk:/usr/sbin/nologin$' || fail "no system user _p11mk: $(getent passwd _p11mk)"
[ "$(id -u _p11mk)" -lt 1000 ] || fail "_p11mk is not a system user"
getent group p11mk >/dev/null || fail "no group p11mk"
[ "$(stat -c '%U:%G %a' /var/lib/p11mk)" = "_p11mk:_p11mk 700" ] || fail "/var/lib/p11mk is $(stat -c '%U:%G %a' /var/lib/p11mk)"
grep -qx /etc/p11mk/server.conf /var/lib/dpkg/info/p11mk.conffiles || fail "server.conf is not a conffile"
MODDIR=$(pkg-config --variable=p11_module_path p11-kit-1)
[ -f "$MODDIR/p11mk-pkcs11.so" ] || fail "the module is not in $MODDIR"
[ -f /usr/share/p11-kit/modules/p11mk.module ] || fail "no p11-kit module file"
for m in p11mk-admin.1 p11mk.conf.5 p11mk-server.8; do
    [ -f "/usr/share/man/man${m##*.}/$m.gz" ] || fail "manual page $m missing"
done
ok "installed: user _p11mk, group p11mk, /var/lib/p11mk 0700, the module and its .module file, manual pages, server.conf as a conffile"

# The installed units as systemd reads them (offline: no systemd needs to run).
SYSUNITS=$(dirname "$(dpkg -L p11mk | grep '/systemd/system/p11mk-server.service$')")
SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$SYSUNITS"/p11mk-server.service \
    "$SYSUNITS"/p11mk-auto-update.service "$SYSUNITS"/p11mk-auto-update.timer > "$W/verify.log" 2>&1 </dev/null \
    || fail "systemd-analyze verify refuses a system unit"
mkdir -m 700 "$W/xdg"
XDG_RUNTIME_DIR=$W/xdg SYSTEMD_LOG_LEVEL=notice systemd-analyze --user verify --man=no \
    /usr/lib/systemd/user/p11mk-server.service >> "$W/verify.log" 2>&1 </dev/null \
    || fail "systemd-analyze verify refuses the user unit"
[ ! -s "$W/verify.log" ] || fail "systemd-analyze verify: $(cat "$W/verify.log")"
ok "systemd-analyze verify: the installed system and user units"

# The demo flow, against the installed module through p11-kit-proxy.so.
"$src/run-demo" --installed > "$W/demo.log" 2>&1 </dev/null || fail "run-demo --installed"
grep -q "Demo complete" "$W/demo.log" || fail "the demo did not complete"
grep -q "^Slot .*p11mk" "$W/demo.log" || fail "the demo did not go through p11-kit-proxy to p11mk"
ok "run-demo --installed: token, keys, signatures checked by OpenSSL, encryption, rotation, through p11-kit-proxy.so"

# ---- the system keystore and the installed server unit -------------------------------
SCONF=/etc/p11mk/server.conf
admin() { runuser -u _p11mk -- env P11MK_CONF=$SCONF p11mk-admin "$@"; }
admin init --generate-key /var/lib/p11mk/master.key > "$W/init.log" 2>&1 </dev/null || fail "p11mk-admin init as _p11mk"
UNIT=$SYSUNITS/p11mk-server.service
GID=$(getent group p11mk | cut -d: -f3)
RUN=$W/run   # the unit's %t (/run under systemd)
unit_argv() { # KEY: the unit's Exec line as ARGV, %t made $RUN
    read -r -a ARGV <<< "$(sed -n "s/^$1=//p" "$UNIT" | head -n 1 | sed "s|%t|$RUN|g")"
}
as_service() { setpriv --reuid=_p11mk --regid=p11mk --clear-groups env -i PATH=/usr/bin:/bin HOME=/var/lib/p11mk P11MK_CONF=$SCONF "$@"; }
start_server() {
    install -d -o _p11mk -g p11mk -m "$(sed -n 's/^RuntimeDirectoryMode=//p' "$UNIT")" "$RUN/p11mk"
    unit_argv ExecStartPre; as_service "${ARGV[@]}" > "$W/pre.log" 2>&1 </dev/null || fail "ExecStartPre"
    unit_argv ExecStart; setsid setpriv --reuid=_p11mk --regid=p11mk --clear-groups \
        env -i PATH=/usr/bin:/bin HOME=/var/lib/p11mk P11MK_CONF=$SCONF "${ARGV[@]}" > "$W/server.out" 2>&1 </dev/null &
    SRV_PG=$!
    unit_argv ExecStartPost; as_service "${ARGV[@]}" </dev/null || fail "ExecStartPost"
}
stop_server() {
    kill -TERM -- "-$SRV_PG"
    for _ in $(seq 50); do kill -0 -- "-$SRV_PG" 2>/dev/null || break; sleep 0.1; done
    SRV_PG=
    rm -rf "$RUN/p11mk"
}
CLIENT_SO=$MODDIR/p11-kit-client.so
mkdir -m 1777 "$W/out"
as_member() { # a member of the group p11mk
    setpriv --reuid=nobody --regid=nogroup --groups="$GID" \
        env -i PATH=/usr/bin:/bin HOME="$W/out" P11_KIT_SERVER_ADDRESS=unix:path=$RUN/p11mk/pkcs11 "$@"
}
start_server
cd "$W/out"
C=(pkcs11-tool --module "$CLIENT_SO")
as_member "${C[@]}" --init-token --slot-index 0 --label system --so-pin so-pin-123 >/dev/null 2>&1 </dev/null || fail "init-token through the socket"
as_member "${C[@]}" --token-label system --login --login-type so --so-pin so-pin-123 --init-pin --new-pin user-pin-1 >/dev/null 2>&1 </dev/null
as_member "${C[@]}" --token-label system --login --pin user-pin-1 --keypairgen --key-type rsa:2048 --label k --id 42 >/dev/null 2>&1 </dev/null
as_member "${C[@]}" --token-label system --read-object --type pubkey --id 42 -o pub.der >/dev/null 2>&1 </dev/null
sign_check() { # the RSA key signs through the installed server; OpenSSL verifies
    echo "system keystore $RANDOM" > msg
    as_member "${C[@]}" --token-label system --login --pin user-pin-1 --sign -m SHA256-RSA-PKCS --id 42 -i msg -o sig \
        >/dev/null 2>&1 </dev/null || fail "$1: signing through the installed server"
    openssl dgst -sha256 -keyform DER -verify pub.der -signature sig msg >/dev/null || fail "$1: OpenSSL refuses the signature"
}
sign_check "installed"
admin rotate > "$W/rotate.log" 2>&1 </dev/null || fail "p11mk-admin rotate as _p11mk"
sign_check "after a rotation"
[ "$(stat -c %U /var/lib/p11mk/master.key /var/lib/p11mk/keystore | sort -u)" = _p11mk ] || fail "the admin's files are not _p11mk's"
ok "the system keystore made as p11mk-server(8) says, served by the installed unit's lines, signed through by a member of p11mk, rotated"

# ---- upgrade ---------------------------------------------------------------------
# The admin edits a conffile and adds files of their own; the upgrade keeps all.
sed -i 's/^log_level = warn$/log_level = info/' $SCONF
grep -q '^log_level = info$' $SCONF || fail "could not edit server.conf"
printf '# made by the admin\nkeystore = /srv/none\n' > /etc/p11mk/p11mk.conf
admin backup /var/lib/p11mk/backup-1 > "$W/backup.log" 2>&1 </dev/null || fail "backup"
fingerprint() {
    (cd /var/lib/p11mk && find . -printf '%p %U %G %m\n' | sort
     sha256sum master.key backup-1 keystore/data.mdb)
    sha256sum $SCONF /etc/p11mk/p11mk.conf
}
stop_server
fingerprint > "$W/before"
dpkg -i "$DEB2" > "$W/upgrade.log" 2>&1 </dev/null || fail "dpkg -i $DEB2 (the upgrade)"
[ "$(dpkg-query -W -f='${Version}' p11mk)" = "$upversion" ] || fail "not upgraded"
fingerprint > "$W/after"
diff "$W/before" "$W/after" || fail "the upgrade changed the keystore, the key file, a backup or the admin's configuration"
start_server
sign_check "after the upgrade"
ok "upgrade to $upversion: keystore, key file, backup, the edited server.conf and the admin's p11mk.conf unchanged; the same key signs"
stop_server
fingerprint > "$W/before"   # the signature's login wrote to the keystore

# ---- remove, purge -----------------------------------------------------------------
dpkg -r p11mk > "$W/remove.log" 2>&1 </dev/null || fail "dpkg -r"
[ ! -e "$MODDIR/p11mk-pkcs11.so" ] || fail "the module is still installed after remove"
fingerprint > "$W/after-remove"
diff "$W/before" "$W/after-remove" || fail "remove changed what the admin made"
getent passwd _p11mk >/dev/null || fail "remove deleted the user _p11mk"
dpkg -P p11mk > "$W/purge.log" 2>&1 </dev/null || fail "dpkg -P"
[ ! -e $SCONF ] || fail "purge left server.conf"
[ ! -e /etc/p11mk/p11mk.conf.example ] || fail "purge left p11mk.conf.example"
grep -v -e "/etc/p11mk/server.conf$" "$W/before" > "$W/before-purge"
fingerprint 2>/dev/null | grep -v -e "/etc/p11mk/server.conf$" > "$W/after-purge" || true
diff "$W/before-purge" "$W/after-purge" || fail "purge deleted or changed something the admin made"
getent passwd _p11mk >/dev/null && getent group p11mk >/dev/null || fail "purge deleted the user or the group that own what stays"
ok "remove keeps everything but the programs; purge deletes the conffiles and keeps the keystore, the key file, the backup and /etc/p11mk/p11mk.conf"

# Nothing made by the admin: purge leaves no trace of the package's directory.
rm -rf /var/lib/p11mk /etc/p11mk
dpkg -i "$DEB2" > "$W/install2.log" 2>&1 </dev/null || fail "dpkg -i (again)"
[ -d /var/lib/p11mk ] || fail "/var/lib/p11mk not made again"
dpkg -P p11mk > "$W/purge2.log" 2>&1 </dev/null || fail "dpkg -P (again)"
[ ! -e /var/lib/p11mk ] || fail "purge left the empty /var/lib/p11mk"
[ ! -e /etc/p11mk ] || fail "purge left /etc/p11mk: $(ls -A /etc/p11mk)"
ok "install then purge with no keystore: /var/lib/p11mk and /etc/p11mk are gone"
echo "package test: $passed steps passed"
