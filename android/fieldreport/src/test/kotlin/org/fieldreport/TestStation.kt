package org.fieldreport

import java.io.File
import java.nio.file.Files
import java.util.concurrent.TimeUnit

/** A real station process (HTTPS, self-signed) on a free loopback port, for the tests. */
class TestStation : AutoCloseable {
    private val bin = System.getenv("FR_STATION_BIN") ?: error("FR_STATION_BIN is not set")
    val dir: File = Files.createTempDirectory("fr-station").toFile()
    private val process: Process = ProcessBuilder(bin, "serve", "--data", dir.path, "--listen", "127.0.0.1:0")
        .redirectError(ProcessBuilder.Redirect.DISCARD)
        .start()
    val url: String
    /** The key pin the station prints (`sha256//…`), checked at enrollment. */
    val pin: String

    init {
        // "station pin: …", then "serving on https://…".
        val lines = process.inputStream.bufferedReader()
        val first = lines.readLine() ?: error("station did not start")
        pin = first.substringAfter("station pin: ").trim()
        val second = lines.readLine() ?: error("station did not start")
        url = second.substringAfter("serving on ").trim()
        check(url.startsWith("https://")) { "station did not start over TLS" }
    }

    /** A one-time enrollment code for a person. */
    fun code(name: String, star: String, role: String = "officer", unit: String = "District 9"): String {
        val p = ProcessBuilder(bin, "enroll", "--data", dir.path, "--name", name, "--star", star, "--role", role, "--unit", unit)
            .redirectError(ProcessBuilder.Redirect.INHERIT)
            .start()
        val out = p.inputStream.bufferedReader().readText()
        check(p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0) { "enroll failed" }
        return out.lineSequence().first { it.startsWith("enrollment code:") }.substringAfter(":").trim()
    }

    override fun close() {
        process.destroy()
        process.waitFor(10, TimeUnit.SECONDS)
        dir.deleteRecursively()
    }
}
