#!/usr/bin/env bash
# Installs the plugin directory DIR as PLUGIN into the local Docker and
# enables it, replacing an installed plugin of that name.
set -euo pipefail
plugin=${1:?usage: install.sh PLUGIN DIR}
dir=${2:?usage: install.sh PLUGIN DIR}
# The state directory is a bind mount; Docker refuses to enable a plugin
# whose mount source does not exist.
mkdir -p /var/lib/weft
if docker plugin inspect "$plugin" >/dev/null 2>&1; then
  docker plugin disable -f "$plugin" >/dev/null 2>&1 || true
  docker plugin rm -f "$plugin" >/dev/null
fi
docker plugin create "$plugin" "$dir" >/dev/null
docker plugin enable "$plugin" >/dev/null
echo "install: $plugin enabled"
