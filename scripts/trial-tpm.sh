#!/usr/bin/env bash
# A software TPM for trying the fleet without TPM hardware (docs/deployment.md): manufactured like a
# vendor's chip, with RSA and ECC endorsement keys and their EK certificates in NV, signed by a local
# "TPM manufacturer" CA (swtpm_localca), then served by swtpm on a loopback port.
#
#   bash scripts/trial-tpm.sh TPM_DIR PORT VENDOR_DIR
#
# VENDOR_DIR holds the manufacturer CA (made on first use, shared by every trial TPM): the fleet trusts
# VENDOR_DIR/swtpm-localca-rootca-cert.pem as manufacturer root and VENDOR_DIR/issuercert.pem as
# intermediate, as it would a vendor's published certificates. TPM_DIR keeps the TPM's state (made on
# first use; later runs serve the same TPM) and swtpm.pid. swtpm listens on 127.0.0.1:PORT, its control
# channel on PORT+1. Prints the TCTI to give the station and the agent. Stop it with
# `kill "$(cat TPM_DIR/swtpm.pid)"`.
set -euo pipefail

usage() { echo "usage: bash scripts/trial-tpm.sh TPM_DIR PORT VENDOR_DIR" >&2; exit 2; }
[ $# -eq 3 ] || usage
tpm_dir=$1 port=$2 vendor_dir=$3
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65534 ] || { echo "trial-tpm: TPM_PORT_INVALID: $port is not a port (1-65534)" >&2; exit 2; }
for tool in swtpm swtpm_setup swtpm_localca; do
  command -v "$tool" >/dev/null || [ -x "/usr/bin/$tool" ] || { echo "trial-tpm: TPM_TOOLS_MISSING: $tool not found (apt-get install swtpm swtpm-tools)" >&2; exit 1; }
done

mkdir -p "$vendor_dir" "$tpm_dir"
chmod 700 "$vendor_dir" "$tpm_dir"
vendor_dir=$(cd "$vendor_dir" && pwd) tpm_dir=$(cd "$tpm_dir" && pwd)

if [ ! -f "$vendor_dir/swtpm_setup.conf" ]; then
  cat >"$vendor_dir/swtpm-localca.conf" <<EOF
statedir = $vendor_dir
signingkey = $vendor_dir/signkey.pem
issuercert = $vendor_dir/issuercert.pem
certserial = $vendor_dir/certserial
EOF
  printf -- '--platform-manufacturer tpm-fleet-trial\n--platform-version 2.1\n--platform-model trial\n' >"$vendor_dir/swtpm-localca.options"
  cat >"$vendor_dir/swtpm_setup.conf" <<EOF
create_certs_tool = /usr/bin/swtpm_localca
create_certs_tool_config = $vendor_dir/swtpm-localca.conf
create_certs_tool_options = $vendor_dir/swtpm-localca.options
active_pcr_banks = sha256
EOF
fi

if [ ! -f "$tpm_dir/tpm2-00.permall" ]; then
  mkdir -p "$tpm_dir/.tmp"
  TMPDIR="$tpm_dir/.tmp" swtpm_setup --tpm2 --tpmstate "$tpm_dir" --create-ek-cert --create-platform-cert --ecc \
    --config "$vendor_dir/swtpm_setup.conf" --overwrite >"$tpm_dir/setup.log" 2>&1 ||
    { echo "trial-tpm: TPM_SETUP_FAILED: swtpm_setup failed, see $tpm_dir/setup.log" >&2; exit 1; }
  rm -rf "$tpm_dir/.tmp"
fi

if [ -f "$tpm_dir/swtpm.pid" ] && kill -0 "$(cat "$tpm_dir/swtpm.pid")" 2>/dev/null; then
  echo "trial-tpm: TPM_RUNNING: already served (pid $(cat "$tpm_dir/swtpm.pid")); stop it first" >&2
  exit 1
fi
swtpm socket --tpm2 --daemon --pid "file=$tpm_dir/swtpm.pid" --tpmstate "dir=$tpm_dir" \
  --server "type=tcp,port=$port,bindaddr=127.0.0.1" --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
  --flags not-need-init,startup-clear --log "file=$tpm_dir/swtpm.log"
echo "swtpm:host=127.0.0.1,port=$port"
