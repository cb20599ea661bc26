package dev.backfill.bench

import dev.backfill.Backfill
import dev.backfill.BackfillConfig
import dev.backfill.HttpClient
import java.io.File
import java.io.IOException
import java.lang.management.ManagementFactory
import java.nio.file.Files

/**
 * Kotlin `track` against Rust `track`, in one run, on one thread, offline (nothing is sent), with
 * the same readings: events/s and p50/p99 latency. Run by `bindings/kotlin/bench.sh`, which builds
 * the release library and the Rust side (`sdk-core/examples/track_rate.rs`).
 *
 * Arguments: EVENTS RUST_BINARY [ROUNDS]. Goals (issue 15): Kotlin at least half the Rust rate,
 * p99 under 100 µs. Figures only: nothing here asserts a time.
 */
fun main(args: Array<String>) {
    val events = args.getOrNull(0)?.toInt() ?: 100_000
    val rust = args.getOrNull(1) ?: error("usage: TrackBench EVENTS RUST_BINARY [ROUNDS]")
    val rounds = args.getOrNull(2)?.toInt() ?: 2
    println("track on one thread, offline, $events events per round, $rounds rounds (Rust, then Kotlin)")
    val runtime = ManagementFactory.getRuntimeMXBean()
    println(
        "JVM: ${runtime.vmName} ${runtime.vmVersion}, GC ${gcs().joinToString { it.name }}, " +
            "max heap ${Runtime.getRuntime().maxMemory() shr 20} MiB, flags ${runtime.inputArguments.filter { it.startsWith("-X") }}"
    )
    repeat(rounds) { round ->
        val dir = Files.createTempDirectory("backfill-bench").toFile()
        try {
            val rustLine = runRust(rust, events, dir)
            val kotlin = runKotlin(events, dir)
            println("round ${round + 1}")
            println("  $rustLine")
            println("  $kotlin")
            val rustRate = Regex("""([0-9.]+) events/s""").find(rustLine)?.groupValues?.get(1)?.toDouble()
            if (rustRate != null) println("  kotlin / rust rate: %.2f".format(kotlin.rate / rustRate))
        } finally {
            dir.deleteRecursively()
        }
    }
}

private class Figures(
    val events: Int,
    val rate: Double,
    val p50Us: Double,
    val p99Us: Double,
    val gcCount: Long,
    val gcMs: Long,
    val jitMs: Long,
) {
    override fun toString() =
        "kotlin track: $events events, %.0f events/s, p50 %.1f us, p99 %.1f us ".format(rate, p50Us, p99Us) +
            "(while timed: $gcCount GCs, $gcMs ms; JIT compiling $jitMs ms)"
}

private fun gcs() = ManagementFactory.getGarbageCollectorMXBeans()

private fun gcCount() = gcs().sumOf { it.collectionCount.coerceAtLeast(0) }

private fun gcMs() = gcs().sumOf { it.collectionTime.coerceAtLeast(0) }

private fun jitMs() = ManagementFactory.getCompilationMXBean()?.totalCompilationTime ?: 0

private fun reading(i: Int): Map<String, Any?> = mapOf(
    "temp" to 18.0 + (i % 100) / 10.0,
    "humidity" to 40 + (i % 30),
    "battery" to 3.7 - (i % 50) / 100.0,
    "ok" to (i % 7 != 0),
)

private fun runKotlin(events: Int, dir: File): Figures {
    val offline = HttpClient { throw IOException("offline") }
    val config = BackfillConfig(
        endpoint = "http://127.0.0.1:9",
        clientId = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f",
        clientSecret = "bench-secret",
        databasePath = File(dir, "kotlin-track.db").path,
        backgroundUpload = false,
    )
    Backfill(config, offline).use { backfill ->
        backfill.setOnline(false)
        // Warm-up, as the Rust side does (events / 10), and for at least 3 s: C2 compiles the
        // encoder and the JNA call path only after tens of thousands of calls, on background
        // threads that would otherwise take the timed run's CPU ("JIT compiling" below).
        val warmUntil = System.nanoTime() + 3_000_000_000L
        var i = 0
        while (i < events / 10 || System.nanoTime() < warmUntil) backfill.track("reading", reading(i++))
        val latencies = LongArray(events)
        val (gcCount0, gcMs0, jitMs0) = Triple(gcCount(), gcMs(), jitMs())
        val start = System.nanoTime()
        for (i in 0 until events) {
            val properties = reading(i)
            val t = System.nanoTime()
            backfill.track("reading", properties)
            latencies[i] = System.nanoTime() - t
        }
        val total = System.nanoTime() - start
        latencies.sort()
        fun percentile(p: Double) = latencies[((latencies.size - 1) * p).toInt()] / 1000.0
        return Figures(
            events, events * 1e9 / total, percentile(0.50), percentile(0.99),
            gcCount() - gcCount0, gcMs() - gcMs0, jitMs() - jitMs0,
        )
    }
}

private fun runRust(binary: String, events: Int, dir: File): String {
    val process = ProcessBuilder(binary, events.toString(), dir.path)
        .redirectError(ProcessBuilder.Redirect.INHERIT)
        .start()
    val output = process.inputStream.bufferedReader().readText().trim()
    check(process.waitFor() == 0) { "$binary failed: $output" }
    return output
}
