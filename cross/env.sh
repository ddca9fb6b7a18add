# Sourced by cross/build and cross/test: toolchain settings for the ARM targets.
# Unit tests for a target are built with Debian's cross gcc and run under qemu-user
# (use_debian_cross); release binaries are linked by cargo-zigbuild against glibc 2.28 so they run
# on older box distributions (zig brings its own linker and libc stubs: don't mix the two).
use_debian_cross() {
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
  export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
  export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
  export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
  export AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar
  export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm -L /usr/arm-linux-gnueabihf"
}

# The oldest glibc the release binaries must run on.
SITEGATE_GLIBC=2.28

triple_of() {
  case "$1" in
    x86_64|amd64) echo x86_64-unknown-linux-gnu ;;
    aarch64|arm64) echo aarch64-unknown-linux-gnu ;;
    armv7|armhf) echo armv7-unknown-linux-gnueabihf ;;
    *) echo "unknown target '$1' (use amd64, aarch64 or armv7)" >&2; return 1 ;;
  esac
}

qemu_of() {
  case "$1" in
    x86_64-unknown-linux-gnu) [ "$(uname -m)" = x86_64 ] || echo "qemu-x86_64 -L /usr/x86_64-linux-gnu" ;;
    aarch64-unknown-linux-gnu) echo "qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armv7-unknown-linux-gnueabihf) echo "qemu-arm -L /usr/arm-linux-gnueabihf" ;;
  esac
}

ensure_cross_tools() {
  local triple=$1
  bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/install-deps"
  rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
}

ensure_zigbuild() {
  command -v cargo-zigbuild >/dev/null 2>&1 && python3 -m ziglang version >/dev/null 2>&1 && return 0
  echo "installing: ziglang cargo-zigbuild (PyPI)"
  python3 -m pip install -q 'ziglang>=0.13' 'cargo-zigbuild>=0.19'
}
