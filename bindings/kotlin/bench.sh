#!/usr/bin/env bash
# Kotlin `track` (the dev.backfill API over JNA and the release libbackfill_ffi) against Rust
# `track` (backfill-core directly), in one run on this machine: events/s, p50 and p99.
#
#   bindings/kotlin/bench.sh [EVENTS] [ROUNDS]        # default 100000 events, 2 rounds
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
events="${1:-100000}"
rounds="${2:-2}"

# The mobile build of the library: no built-in HTTP transport (backfill-ffi's default).
cargo build -q --release -p backfill-ffi --lib
cargo build -q --release -p backfill-core --no-default-features --example track_rate

mvn -B -q -ntp -f bindings/kotlin test-compile
mvn -B -q -ntp -f bindings/kotlin dependency:build-classpath \
  -Dmdep.includeScope=test -Dmdep.outputFile="$root/bindings/kotlin/target/test-classpath.txt"
classpath="bindings/kotlin/target/test-classes:bindings/kotlin/target/classes:$(cat bindings/kotlin/target/test-classpath.txt)"

# The JVM as an app gets it, fixed so that the figures do not depend on this machine's memory:
# a 256 MiB heap (what a phone grants an app, dalvik.vm.heapgrowthlimit, is 256-512 MiB; the
# JVM's own default would be a quarter of the RAM) and G1, the JVM's default collector. The
# bench warms the path up before timing and prints the GC and JIT time inside the timed run.
# JAVA_OPTS replaces these flags (e.g. JAVA_OPTS="-Xmx256m -XX:+UseZGC").
java_opts="${JAVA_OPTS:--Xms256m -Xmx256m -XX:+UseG1GC}"
# shellcheck disable=SC2086
java $java_opts -Djna.library.path="$root/target/release" \
  -cp "$classpath" dev.backfill.bench.TrackBenchKt "$events" "$root/target/release/examples/track_rate" "$rounds"
