#!/usr/bin/env bash
# p11-kit: the module registered through a user .module file is listed by
# `p11-kit list-modules` and usable by pkcs11-tool through p11-kit-proxy.so.
# p11-kit skips per-user configuration in programs running as root.
P11MK_NONROOT=1
. "${P11MK_TESTLIB:?run the integration tests through meson test}"
need p11-kit
need pkcs11-tool
PROXY=$(pkg-config --variable=proxy_module p11-kit-1 2>/dev/null || true)
[ -n "$PROXY" ] && [ -f "$PROXY" ] || PROXY=$(ls /usr/lib/*/p11-kit-proxy.so 2>/dev/null | head -n 1)
[ -f "$PROXY" ] || skip "p11-kit-proxy.so not found"

init_token viakit
p11 --token-label viakit --login --pin $PIN --keypairgen --key-type EC:prime256v1 --label kitkey --id 07 >/dev/null

# p11-kit reads per-user module configs from ~/.config/pkcs11/modules.
mkdir -p "$HOME/.config/pkcs11/modules"
sed "s|^module:.*|module: $MOD|" "$(dirname "$P11MK_TESTLIB")/../../p11-kit-module/p11mk.module.in" \
    > "$HOME/.config/pkcs11/modules/p11mk.module"
grep -q "^module: $MOD" "$HOME/.config/pkcs11/modules/p11mk.module" || fail "module file not written"

p11-kit list-modules > mods.txt 2>&1 || { cat mods.txt; fail "p11-kit list-modules failed"; }
grep -q "^p11mk:" mods.txt || { cat mods.txt; fail "p11-kit does not list the p11mk module"; }
grep -q "viakit" mods.txt || { cat mods.txt; fail "p11-kit does not list the token"; }
grep -A3 "^p11mk:" mods.txt | grep >/dev/null "p11mk" || fail "library description missing"
ok "p11-kit list-modules lists p11mk and its token"

pkcs11-tool --module "$PROXY" -L > slots.txt
grep -q "viakit" slots.txt || { cat slots.txt; fail "token not visible through p11-kit-proxy"; }
echo "through the proxy" > msg
pkcs11-tool --module "$PROXY" --token-label viakit --login --pin $PIN --sign -m ECDSA-SHA256 --id 07 -i msg -o sig >/dev/null
p11 --token-label viakit --login --pin $PIN --verify -m ECDSA-SHA256 --id 07 -i msg --signature-file sig >/dev/null \
    || fail "signature made through the proxy does not verify directly"
ok "pkcs11-tool through p11-kit-proxy signs with the token"

# The module loaded both directly and through p11-kit in one process shares one keystore environment.
grep -q kitkey <<<"$(pkcs11-tool --module "$PROXY" --token-label viakit --login --pin $PIN -O)" || fail "proxy listing"
ok "object listing through the proxy"
