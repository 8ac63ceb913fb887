# Sourced by the scripts that build: finds the Rust toolchain when run through sudo.
# sudo resets PATH (secure_path) and HOME, so the invoking user's rustup toolchain in
# ~/.cargo is not found; use that user's CARGO_HOME and RUSTUP_HOME then.
if ! command -v cargo >/dev/null 2>&1 && [ -n "${SUDO_USER:-}" ]; then
    user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    if [ -x "$user_home/.cargo/bin/cargo" ]; then
        export CARGO_HOME="$user_home/.cargo"
        export RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
        export PATH="$CARGO_HOME/bin:$PATH"
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install a Rust toolchain (rustup) first; $(basename "$0") builds the workspace" >&2
    exit 1
fi
