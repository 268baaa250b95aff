#!/usr/bin/env bash
# The ten lines a user would write instead of credsync: publish each upload with install(1),
# then send the consumer container a HUP. No settle, no validation, no atomic replace.
#   bench/shell_baseline.sh SOURCE DEST CONTAINER [UID:GID]
# (or SOURCE, DEST, CONTAINER, OWNER in the environment; OWNER defaults to 1001:1001)
src=${1:-${SOURCE:?}} dest=${2:-${DEST:?}} container=${3:-${CONTAINER:?}} owner=${4:-${OWNER:-1001:1001}}
inotifywait -m -e close_write,moved_to --format '%f' "$src" |
  while IFS= read -r name; do
    install -o "${owner%%:*}" -g "${owner##*:}" -m 600 "$src/$name" "$dest/$name" &&
      docker kill -s HUP "$container" >/dev/null
  done
