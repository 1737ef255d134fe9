#!/bin/sh
# One-shot, before the Temporal server starts (service temporal-admin-tools): create the
# databases of the persistence and visibility stores and bring their schemas to the
# version the admin-tools image ships. Every step may run again: an existing database
# is kept, setup-schema leaves a versioned schema alone and update-schema applies only
# the versions that are missing.
set -eu

: "${POSTGRES_SEEDS:?}" "${DB_PORT:?}" "${POSTGRES_USER:?}" "${POSTGRES_PWD:?}"
DBNAME=${DBNAME:-temporal}
VISIBILITY_DBNAME=${VISIBILITY_DBNAME:-temporal_visibility}
SCHEMA_DIR=${SCHEMA_DIR:-/etc/temporal/schema/postgresql/v12}
# temporal-sql-tool reads the password from the environment, never from argv.
SQL_PASSWORD=$POSTGRES_PWD
export SQL_PASSWORD

sql_tool() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$DB_PORT" \
        -u "$POSTGRES_USER" "$@"
}

create_database() {
    if out=$(sql_tool --db "$1" create 2>&1); then
        echo "setup-schema: created database $1"
        return 0
    fi
    case $out in
        *"already exists"*)
            echo "setup-schema: database $1 already exists"
            return 0
            ;;
    esac
    echo "$out" >&2
    return 1
}

setup_store() {
    create_database "$1"
    sql_tool --db "$1" setup-schema -v 0.0
    sql_tool --db "$1" update-schema -d "$SCHEMA_DIR/$2/versioned"
}

setup_store "$DBNAME" temporal
setup_store "$VISIBILITY_DBNAME" visibility
echo "setup-schema: $DBNAME and $VISIBILITY_DBNAME are up to date"
