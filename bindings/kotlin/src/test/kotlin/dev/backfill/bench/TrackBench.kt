package dev.backfill.bench

import dev.backfill.Backfill
import dev.backfill.BackfillConfig
import dev.backfill.HttpClient
import java.io.File
import java.io.IOException
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

private class Figures(val events: Int, val rate: Double, val p50Us: Double, val p99Us: Double) {
    override fun toString() =
        "kotlin track: $events events, %.0f events/s, p50 %.1f us, p99 %.1f us".format(rate, p50Us, p99Us)
}

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
        // Warm-up: the JIT compiles the encoder and the JNA call path.
        for (i in 0 until events / 10) backfill.track("reading", reading(i))
        val latencies = LongArray(events)
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
        return Figures(events, events * 1e9 / total, percentile(0.50), percentile(0.99))
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
