package org.fieldreport

import java.io.File
import java.nio.file.Files
import java.util.concurrent.TimeUnit

/** A real station process (HTTPS, self-signed) on a free loopback port, for the tests. */
class TestStation : AutoCloseable {
    private val bin = System.getenv("FR_STATION_BIN") ?: error("FR_STATION_BIN is not set")
    val dir: File = Files.createTempDirectory("fr-station").toFile()
    private var process: Process
    val url: String
    /** The key pin the station prints (`sha256//…`), checked at enrollment. */
    val pin: String

    init {
        val (p, pinLine, urlLine) = launch("127.0.0.1:0")
        process = p
        pin = pinLine
        url = urlLine
    }

    /** Starts the station on [listen]; its pin and URL lines. */
    private fun launch(listen: String): Triple<Process, String, String> {
        val p = ProcessBuilder(bin, "serve", "--data", dir.path, "--listen", listen)
            .redirectError(ProcessBuilder.Redirect.DISCARD)
            .start()
        // "station pin: …", then "serving on https://…".
        val lines = p.inputStream.bufferedReader()
        val first = lines.readLine() ?: error("station did not start")
        val second = lines.readLine() ?: error("station did not start")
        val u = second.substringAfter("serving on ").trim()
        check(u.startsWith("https://")) { "station did not start over TLS" }
        return Triple(p, first.substringAfter("station pin: ").trim(), u)
    }

    /** Stops the station (its data stays). */
    fun stop() {
        process.destroy()
        process.waitFor(10, TimeUnit.SECONDS)
    }

    /** Starts it again on the same address and data directory. */
    fun start() {
        val (p, _, u) = launch(url.removePrefix("https://"))
        check(u == url) { "the station came back on $u, not $url" }
        process = p
    }

    /** A copy of the (stopped) station's data directory. */
    fun snapshot(): File {
        val copy = Files.createTempDirectory("fr-station-copy").toFile()
        dir.copyRecursively(copy, overwrite = true)
        return copy
    }

    /** Puts a snapshot back in place of the (stopped) station's data: a database restored from an older backup. */
    fun restore(copy: File) {
        dir.deleteRecursively()
        copy.copyRecursively(dir, overwrite = true)
        java.nio.file.Files.setPosixFilePermissions(dir.toPath(), java.nio.file.attribute.PosixFilePermissions.fromString("rwx------"))
        copy.deleteRecursively()
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
