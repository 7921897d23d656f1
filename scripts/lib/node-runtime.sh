# Sourced by setup.sh and package.sh; the caller defines log().
# ensure_node_runtime MAJOR: prints the path of a Node.js MAJOR binary (e.g. 24, the LTS the device
# package carries and CI runs the suite on besides the machine's Node), from the npm registry's official
# platform package node-linux-<arch>@MAJOR. The package tarball is kept in $TPM_FLEET_NODE_CACHE
# (default ~/.cache/tpm-fleet) and unpacked once under .tools/node-<version>/ in the checkout
# (untracked); a later call reuses both and needs no network.
ensure_node_runtime() {
  local major=$1 arch cache tgz name version dir
  case $(uname -m) in
    x86_64) arch=x64 ;;
    aarch64) arch=arm64 ;;
    *) echo "node-runtime: unsupported machine $(uname -m) (x86_64, aarch64)" >&2; return 2 ;;
  esac
  cache=${TPM_FLEET_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tpm-fleet}
  mkdir -p "$cache"
  tgz=$(ls -1 "$cache"/node-linux-"$arch"-"$major".*.tgz 2>/dev/null | sort -V | tail -1 || true)
  if [[ -z $tgz ]]; then
    log "fetching node-linux-$arch@$major from the npm registry"
    name=$(cd "$cache" && npm pack --silent "node-linux-$arch@$major" </dev/null | tail -1)
    tgz=$cache/$name
  fi
  version=${tgz##*/node-linux-$arch-}
  version=${version%.tgz}
  dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.tools/node-$version
  if [[ ! -x $dir/bin/node ]]; then
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    tar -xzf "$tgz" -C "$dir.tmp" --strip-components=1 package/bin/node
    [[ $("$dir.tmp/bin/node" --version) == v$major.* ]] || { echo "node-runtime: $tgz holds $("$dir.tmp/bin/node" --version), not Node $major" >&2; return 1; }
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  echo "$dir/bin/node"
}
