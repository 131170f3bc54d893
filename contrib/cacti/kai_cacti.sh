#!/bin/sh
# Cacti data input script for kai: prints the fields of the "Kai" data template as
# `name:value` pairs (bytes curr_items cmd_get cmd_set bytes_read bytes_write).
# Usage (Cacti "Script/Command" input method): kai_cacti.sh <hostname> [port]
# No PHP needed; it asks the node with `kai stats --cacti`.
set -eu
host=${1:?usage: kai_cacti.sh HOST [PORT]}
port=${2:-11211}
exec "${KAI:-/usr/bin/kai}" stats --host "$host:$port" --cacti --timeout 10
