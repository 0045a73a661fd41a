package org.fieldreport

import java.io.File
import java.nio.file.Files
import org.fieldreport.ffi.FieldReportException
import org.fieldreport.ffi.FieldReportStore
import org.fieldreport.ffi.SyncCancel
import org.fieldreport.ffi.debugTriggerPanic
import org.fieldreport.ffi.generateStoreKey
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Test

/** The FFI boundary itself: panics and objects freed from other threads. */
class FfiBoundaryTest {
    private val tmp: File = Files.createTempDirectory("fr-kotlin-ffi").toFile()

    @After
    fun cleanUp() {
        tmp.deleteRecursively()
    }

    private val key = generateStoreKey()

    private fun store(name: String) = FieldReportStore.open(File(tmp, name).path, key)

    @Test
    fun panicInRustArrivesAsInternalException() {
        assertThrows(FieldReportException.Internal::class.java) { debugTriggerPanic() }
        // The library still works afterwards.
        store("after-panic").use { assertNull(it.identity()) }
    }

    @Test
    fun objectsDroppedFromPlainThreads() {
        TestStation().use { station ->
            val stores = (0 until 4).map { i ->
                store("drop-$i").also { it.enroll(station.url, station.code("Officer D. Test", "1103$i")) }
            }
            stores.forEach { s -> s.createReport().also { s.set(it, "narrative", "x") }; s.sync() }
            val cancels = (0 until 4).map { SyncCancel() }
            val threads = stores.zip(cancels).map { (s, c) -> Thread { s.close(); c.close() } }
            threads.forEach { it.start() }
            threads.forEach { it.join() }
            // And the store reopens with its data after being freed elsewhere.
            store("drop-0").use { assertEquals(1, it.listReports(null, 0u, null).size) }
        }
    }
}
