#!/bin/sh
# One-shot, once the Temporal server is healthy (service temporal-setup): the namespace
# scaleflow runs in, kept for at least NAMESPACE_RETENTION, and the Keyword search
# attributes its workflows set (what `scaleflow dev` passes as --search-attribute).
# Safe to run again: an existing namespace is kept (its retention only ever grows) and
# an attribute already registered as Keyword counts as done.
set -eu

: "${TEMPORAL_ADDRESS:?}" "${NAMESPACE:?}" "${NAMESPACE_RETENTION:?}"
: "${KEYWORD_SEARCH_ATTRIBUTES:?}"
ATTEMPTS=${SETUP_ATTEMPTS:-60}
DELAY_S=${SETUP_RETRY_DELAY_S:-2}

# retry CMD...: the server may still be joining its ring, and a namespace just created
# reaches every frontend only after a registry refresh. Status 2 is final: no retry.
retry() {
    tries=1
    while :; do
        rc=0
        "$@" || rc=$?
        case $rc in
            0) return 0 ;;
            2) return 2 ;;
        esac
        if [ "$tries" -ge "$ATTEMPTS" ]; then
            echo "setup-namespace: giving up after $tries attempts: $*" >&2
            return 1
        fi
        tries=$((tries + 1))
        sleep "$DELAY_S"
    done
}

# Go-style durations as the CLI takes them (72h, 4320m, 3d), in seconds.
seconds() {
    case $1 in
        *d) echo $((${1%d} * 86400)) ;;
        *h) echo $((${1%h} * 3600)) ;;
        *m) echo $((${1%m} * 60)) ;;
        *s) echo "${1%s}" ;;
        *) echo "setup-namespace: cannot read the duration $1" >&2; return 1 ;;
    esac
}

ensure_namespace() {
    if out=$(temporal operator namespace create --namespace "$NAMESPACE" \
        --retention "$NAMESPACE_RETENTION" 2>&1); then
        echo "setup-namespace: created namespace $NAMESPACE ($NAMESPACE_RETENTION retention)"
        return 0
    fi
    case $out in
        *"already exists"*) ;;
        *) echo "$out" >&2; return 1 ;;
    esac
    # It exists: raise a shorter retention, never shorten a longer one.
    current=$(temporal operator namespace describe --namespace "$NAMESPACE" --output json \
        | sed -n 's/.*"workflowExecutionRetentionTtl": *"\([0-9]*\)[.0-9]*s".*/\1/p' \
        | head -n 1) || return 1
    if [ -n "$current" ] && [ "$current" -ge "$(seconds "$NAMESPACE_RETENTION")" ]; then
        echo "setup-namespace: namespace $NAMESPACE exists (retention ${current}s)"
        return 0
    fi
    temporal operator namespace update --namespace "$NAMESPACE" \
        --retention "$NAMESPACE_RETENTION"
}

ensure_keyword_attribute() {
    if out=$(temporal operator search-attribute create --namespace "$NAMESPACE" \
        --name "$1" --type Keyword 2>&1); then
        echo "setup-namespace: search attribute $1 (Keyword) registered"
        return 0
    fi
    case $out in
        *"different type"*)
            # Registered with another type: only an operator can sort that out.
            echo "$out" >&2
            return 2
            ;;
        *"already exists"*)
            echo "setup-namespace: search attribute $1 already registered"
            return 0
            ;;
    esac
    echo "$out" >&2
    return 1
}

# The frontend validates a workflow's search attributes against its namespace cache,
# which learns of new ones on its next refresh: done once it lists every one of them.
attributes_listed() {
    listed=$(temporal operator search-attribute list --namespace "$NAMESPACE" 2>&1) || return 1
    for name in $KEYWORD_SEARCH_ATTRIBUTES; do
        if ! printf '%s\n' "$listed" | grep -qw -- "$name"; then
            echo "setup-namespace: $name is not listed yet"
            return 1
        fi
    done
}

seconds "$NAMESPACE_RETENTION" >/dev/null
retry temporal operator cluster health
retry ensure_namespace
for name in $KEYWORD_SEARCH_ATTRIBUTES; do
    retry ensure_keyword_attribute "$name"
done
retry attributes_listed
echo "setup-namespace: namespace $NAMESPACE and its search attributes are ready"
