#!/bin/sh
# Stop the ejabberd started by start.sh, by its recorded PID only, after
# checking that this PID really runs our private spool. SIGTERM makes the
# Erlang VM stop cleanly (Mnesia included).
set -u
RUN=${EJABBERD_BENCH_DIR:?set EJABBERD_BENCH_DIR}
[ -f "$RUN/server.pid" ] || { echo "not running (no pid file)"; exit 0; }
PID=$(cat "$RUN/server.pid")
if ! kill -0 "$PID" 2>/dev/null; then
    rm -f "$RUN/server.pid"; echo "not running"; exit 0
fi
if ! tr '\0' ' ' < "/proc/$PID/cmdline" | grep -q -- "$RUN/spool"; then
    echo "pid $PID is not our ejabberd; not touching it" >&2; exit 1
fi
kill -TERM "$PID"
i=0
while kill -0 "$PID" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
if kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID"; fi
rm -f "$RUN/server.pid"
echo "stopped $PID"
