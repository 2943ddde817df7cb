#!/usr/bin/env bash
# A monthly corpus refresh, published atomically: what cron, a systemd timer or the Airflow DAG
# (ops/airflow_monthly_refresh.py) runs; docs/operations.md. Usage:
#
#   ops/monthly_refresh.sh ROOT 'new-crawl/*.warc.gz' [VERSION [STEP]]
#
# ROOT holds one directory per version and CURRENT, a symlink to the published one. The new version
# ROOT/VERSION (default: this month, YYYY-MM) is refreshed against CURRENT (or built from scratch the
# first time), verified, tokenized (ROOT/VERSION.tokens, when ROOT/tokenizer holds a tokenizer), and
# only then published: CURRENT is replaced by one atomic rename. A run that fails or is killed at any
# point leaves CURRENT and what it points to as they were; run it again. STEP runs one step (refresh,
# verify, tokenize, publish: the Airflow DAG's tasks); none runs them all. GRISTMILL_OPTIONS are
# added to the corpus/refresh command (e.g. "--config /etc/gristmill/corpus.yaml"). The exit status
# is the failing gristmill command's (README: exit codes).
set -euo pipefail

root=${1:?usage: monthly_refresh.sh ROOT INPUT_GLOB [VERSION [STEP]]}
input=${2:?usage: monthly_refresh.sh ROOT INPUT_GLOB [VERSION [STEP]]}
version=${3:-$(date +%Y-%m)}
step=${4:-all}
gristmill=${GRISTMILL:-gristmill}
read -r -a options <<< "${GRISTMILL_OPTIONS:-}"
new="$root/$version"

refresh() {
  mkdir -p "$root"
  if [ -L "$root/CURRENT" ]; then
    local published
    published=$(readlink -f "$root/CURRENT")
    if [ "$published" = "$(readlink -f "$new")" ]; then
      echo "monthly_refresh: $version is already published" >&2
      return 0
    fi
    echo "monthly_refresh: refreshing $published -> $new" >&2
    "$gristmill" refresh --published "$published" --input "$input" --output "$new" "${options[@]}"
  else
    echo "monthly_refresh: first version: $new" >&2
    "$gristmill" corpus --input "$input" --output "$new" "${options[@]}"
  fi
}

verify() {
  "$gristmill" verify "$new"
}

tokenize() {
  [ -f "$root/tokenizer/tokenizer.model" ] || return 0
  local kept
  kept=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["counts"]["kept"])' "$new/manifest.json")
  if [ "$kept" = 0 ]; then
    echo "monthly_refresh: $version adds no documents: nothing new to tokenize" >&2
    return 0
  fi
  "$gristmill" tokenize --corpus "$new" --tokenizer "$root/tokenizer" --output "$new.tokens"
  "$gristmill" verify "$new.tokens"
}

publish() {
  "$gristmill" verify "$new" > /dev/null  # never publish what is not sound
  ln -sfn "$version" "$root/.CURRENT.new"
  mv -T "$root/.CURRENT.new" "$root/CURRENT"  # rename(2): readers see the old version or the new one
  echo "monthly_refresh: published $new" >&2
}

case "$step" in
  all) refresh && verify && tokenize && publish ;;
  refresh|verify|tokenize|publish) "$step" ;;
  *) echo "monthly_refresh: unknown step $step (refresh, verify, tokenize, publish)" >&2; exit 2 ;;
esac
