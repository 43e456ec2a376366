# Shared by scripts/test.sh and scripts/demo.sh (sourced, not run): messages and
# installing Debian packages as root or through sudo.

step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

# Privileged commands run directly as root, through sudo otherwise. A user who is
# neither root nor has sudo gets told what to do instead.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "this step needs root: run the script as root (su -c '$0'), or install sudo"
    fi
}

# True when the Debian package is installed.
have_package() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# The packages the build needs: a C compiler and the C library's headers and
# start files (the `ring` crate compiles C; rustc links through `cc`), and make
# (jemalloc, the binary's allocator, builds with configure and make). No crate
# uses pkg-config or a system library beyond libc.
build_packages() {
    local missing=()
    command -v cc >/dev/null || missing+=(gcc)
    command -v make >/dev/null || missing+=(make)
    if command -v dpkg-query >/dev/null; then
        have_package libc6-dev || missing+=(libc6-dev)
    fi
    if ((${#missing[@]} > 0)); then
        printf '%s\n' "${missing[@]}"
    fi
}

# Installs the named Debian packages with apt-get (as root or through sudo).
install_packages() {
    (($# > 0)) || return 0
    command -v apt-get >/dev/null ||
        die "install $* yourself (these scripts know only apt-get)"
    if [[ $EUID -ne 0 ]] && ! command -v sudo >/dev/null; then
        die "install $*: run this script once as root (su -c '$0'), or install the packages yourself as root: apt-get install -y $*"
    fi
    note "Installing $*"
    as_root apt-get update -q
    # Only what is named: recommended packages (documentation, X libraries,
    # sysstat…) would triple the download and add nothing the scripts use.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}
