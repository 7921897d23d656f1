# Sourced by scripts that need Debian packages (setup.sh, render-dashboard.sh); the caller defines log().
# ensure_apt_packages PKG...: installs the ones not installed yet (as root, non-interactive); otherwise
# prints the apt-get line to run and exits 1.
ensure_apt_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -eq 0 ]]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "missing Debian packages: ${missing[*]}"
    log "run as root: apt-get install -y ${missing[*]}"
    exit 1
  fi
}
