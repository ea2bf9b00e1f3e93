#!/usr/bin/env bash
# Installs the Debian packages kubetag needs to build (the C libraries librdkafka is built
# against) and to turn journal exports into real journal files (systemd-journal-remote,
# journalctl), plus any extra packages named as arguments. Installs only what is missing.
set -euo pipefail

need=()
[ -x /lib/systemd/systemd-journal-remote ] || [ -x /usr/lib/systemd/systemd-journal-remote ] \
  || need+=(systemd-journal-remote)
command -v journalctl >/dev/null || need+=(systemd)
for package in libssl-dev libsasl2-dev zlib1g-dev pkg-config cmake "$@"; do
  dpkg -s "$package" >/dev/null 2>&1 || need+=("$package")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
