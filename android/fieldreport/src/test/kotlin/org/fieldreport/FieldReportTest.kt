package org.fieldreport

import java.io.File
import java.nio.file.Files
import java.time.Instant
import java.util.Collections
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.random.Random
import org.fieldreport.ffi.FieldReportException
import org.fieldreport.ffi.FieldReportStore
import org.fieldreport.ffi.FieldValue
import org.fieldreport.ffi.ReportEvent
import org.fieldreport.ffi.SyncCancel
import org.fieldreport.ffi.SyncPhase
import org.fieldreport.ffi.generateStoreKey
import org.junit.After
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

class FieldReportTest {
    private val tmp: File = Files.createTempDirectory("fr-kotlin").toFile()

    @After
    fun cleanUp() {
        tmp.deleteRecursively()
    }

    private val key = generateStoreKey()

    private fun store(name: String) = FieldReportStore.open(File(tmp, name).path, key)

    private fun photo(bytes: Int, seed: Int): File =
        File(tmp, "photo-$seed.jpg").apply { writeBytes(Random(seed).nextBytes(bytes)) }

    private val badge = "supervisory_federal_officer.badge_number"

    @Test
    fun captureOfflineConflictSyncAndResolve() {
        TestStation().use { station ->
            store("phone").use { phone ->
                store("tablet").use { tablet ->
                    // One officer, two devices.
                    val me = phone.enroll(station.url, station.code("Officer K. Test", "11021"), station.pin)
                    assertEquals(station.pin, phone.stationPin())
                    assertEquals("officer", me.role)
                    tablet.enroll(station.url, station.code("Officer K. Test", "11021"))

                    // Offline capture on the phone.
                    val r = phone.createReport()
                    phone.set(r, "occurred.start", Instant.parse("2026-11-20T15:04:00Z"))
                    phone.set(r, "location.address", "W 26th St & S Pulaski Rd")
                    phone.set(r, "federal_agencies", listOf("ice"))
                    phone.set(r, "narrative", "Agents detained a man at the bus stop.")
                    val agent = phone.add(r, "agents", "badge_number" to "A-17")
                    val img = photo(300_000, 1)
                    val attached = phone.attach(r, img, "image/jpeg", Instant.parse("2026-11-20T15:06:00Z"))
                    assertEquals(300_000L, attached.size.toLong())
                    phone.set(r, badge, "4470")
                    assertEquals("A-17", phone.field(r, "agents/$agent/badge_number").text)
                    assertTrue(phone.unsyncedCount() > 0uL)

                    val phases = Collections.synchronizedList(mutableListOf<SyncPhase>())
                    val up = phone.sync { phases.add(it.phase) }
                    assertEquals(1uL, up.mediaUploaded)
                    assertTrue(up.pushed >= 7uL)
                    assertEquals(0uL, phone.unsyncedCount())
                    assertTrue(SyncPhase.UPLOAD_MEDIA in phases && SyncPhase.PUSH in phases)
                    assertEquals(SyncPhase.DONE, phases.last())

                    // The station's receipts: one per change pushed, each into a
                    // checkpoint the phone holds.
                    val checkpoint = phone.logCheckpoint()
                    assertNotNull(checkpoint)
                    assertTrue(checkpoint!!.startsWith("fieldreport/"))
                    val receipts = phone.logReceipts(r)
                    assertEquals(up.pushed, receipts.size.toULong())
                    assertTrue(receipts.all { it.logIndex < it.treeSize && it.proof.isNotEmpty() })
                    // A checkpoint altered after signing is not the station's: refused
                    // as bad input; the phone keeps the one it held.
                    val lines = checkpoint.lines()
                    val altered = (listOf(lines[0], (lines[1].toLong() + 1).toString()) + lines.drop(2)).joinToString("\n")
                    val refused = assertThrows(FieldReportException.InvalidInput::class.java) {
                        phone.observeLogCheckpoint(altered)
                    }
                    assertTrue(refused.reason, refused.reason.contains("not signed"))
                    assertEquals(checkpoint, phone.logCheckpoint())

                    // The tablet gets the report and the photo.
                    val down = tablet.sync()
                    assertEquals(1uL, down.mediaDownloaded)
                    assertEquals(phone.report(r).json, tablet.report(r).json)
                    val media = tablet.report(r).media.single()
                    assertEquals(attached.sha256, media.sha256)
                    assertTrue(media.storedLocally)
                    assertArrayEquals(img.readBytes(), tablet.mediaBytes(media.sha256!!))
                    // Encrypted on disk: the photo's bytes are nowhere in the store.
                    val head = img.readBytes().copyOfRange(1000, 1032)
                    File(tmp, "tablet").walk().filter { it.isFile }.forEach { f ->
                        val b = f.readBytes()
                        assertTrue("${f.name} holds photo bytes", (0..b.size - head.size).none { i ->
                            b.copyOfRange(i, i + head.size).contentEquals(head)
                        })
                    }

                    // Concurrent offline edits of one field.
                    phone.set(r, badge, "4471")
                    tablet.set(r, badge, "4417")
                    phone.sync()
                    tablet.sync()
                    phone.sync()
                    val conflict = phone.report(r).conflicts.single { it.path == badge }
                    assertFalse(conflict.removedWhileEdited)
                    assertEquals(setOf("4471", "4417"), conflict.values.map { it.value.text }.toSet())
                    assertEquals(phone.report(r).json, tablet.report(r).json)

                    // Resolve on the phone; the tablet sees it, the history keeps all.
                    phone.resolveConflict(r, badge, FieldValue.Text("4471-B"))
                    phone.sync()
                    tablet.sync()
                    assertTrue(tablet.report(r).conflicts.none { it.path == badge })
                    assertEquals("4471-B", tablet.field(r, badge).text)
                    val history = tablet.fieldHistory(r, badge).mapNotNull { it.value.text }
                    assertTrue(history.containsAll(listOf("4470", "4471", "4417", "4471-B")))
                    assertEquals(listOf(r), tablet.listReports(null, 0u, null).map { it.id })
                }
            }
        }
    }

    @Test
    fun aStationRestoredFromAnOlderCopyIsRefusedAndTheOutboxKept() {
        TestStation().use { station ->
            store("restored").use { phone ->
                phone.enroll(station.url, station.code("Officer R. Test", "11031"), station.pin)
                val r = phone.createReport()
                phone.set(r, "narrative", "First.")
                phone.sync()
                station.stop()
                val older = station.snapshot()
                station.start()
                phone.set(r, "narrative", "Second.")
                phone.sync()
                val held = phone.logCheckpoint()!!
                // The station's data put back from the older copy.
                station.stop()
                station.restore(older)
                station.start()
                phone.set(r, "narrative", "Third.")
                val waiting = phone.unsyncedCount()
                val err = assertThrows(FieldReportException.StationLogInconsistent::class.java) { phone.sync() }
                assertTrue(err.reason, err.reason.contains("shrank") || err.reason.contains("two different trees"))
                assertEquals(waiting, phone.unsyncedCount())
                assertEquals(held, phone.logCheckpoint())
            }
        }
    }

    @Test
    fun errorsArriveAsKotlinExceptions() {
        store("a").use { s ->
            assertThrows(FieldReportException.NotEnrolled::class.java) { s.createReport() }
            assertThrows(FieldReportException.Network::class.java) { s.enroll("http://127.0.0.1:1", "nope") }
            assertNull(s.identity())
            TestStation().use { station ->
                val err = assertThrows(FieldReportException.Station::class.java) { s.enroll(station.url, "wrong-code") }
                assertEquals(422.toUShort(), err.status)
                // Another key than the one printed with the code: refused before the code is sent.
                val code = station.code("Officer E. Test", "11022")
                val otherKey = "sha256//" + "A".repeat(43) + "="
                assertThrows(FieldReportException.StationPinMismatch::class.java) { s.enroll(station.url, code, otherKey) }
                assertThrows(FieldReportException.InvalidInput::class.java) { s.enroll(station.url, code, "not-a-pin") }
                assertThrows(FieldReportException.InvalidInput::class.java) { s.enroll("http://192.0.2.1:8787", code) }
                assertNull(s.identity())
                s.enroll(station.url, code, station.pin)
                assertThrows(FieldReportException.AlreadyEnrolled::class.java) {
                    s.enroll(station.url, station.code("Officer E. Test", "11022"))
                }
            }
            val r = s.createReport()
            assertThrows(FieldReportException.InvalidInput::class.java) { s.set(r, "no_such_field", "x") }
            assertThrows(FieldReportException.InvalidInput::class.java) { s.set(r, "narrative", true) }
            assertThrows(FieldReportException.InvalidInput::class.java) { s.report("not-a-uuid") }
            assertThrows(FieldReportException.NotFound::class.java) { s.report("00000000-0000-4000-8000-000000000000") }
            assertThrows(FieldReportException.InvalidInput::class.java) { s.resolveConflict(r, "narrative", FieldValue.Null) }
            assertThrows(FieldReportException.MediaUnreadable::class.java) {
                s.attach(r, File(tmp, "missing.jpg"), "image/jpeg")
            }
            val missing = assertThrows(FieldReportException.MissingRequired::class.java) { s.submit(r) }
            assertTrue("occurred.start" in missing.fields)
            // A refused call changed nothing.
            assertNull(s.field(r, "narrative"))
            assertTrue(s.report(r).media.isEmpty())
            // Witnesses to require: a key that is not one is bad input, and none are kept.
            assertThrows(FieldReportException.InvalidInput::class.java) { s.setRequiredWitnesses(listOf("not a key"), 1u) }
            assertThrows(FieldReportException.InvalidInput::class.java) { s.setRequiredWitnesses(emptyList(), 1u) }
            assertNull(s.witnessStatus())
            // Sign out and wipe refuses while work is unsynced.
            val unsynced = assertThrows(FieldReportException.UnsyncedWork::class.java) { s.wipe(false) }
            assertTrue(unsynced.changes >= 1uL)
        }
        // The wrong key and a short key are typed errors; the store is intact.
        assertThrows(FieldReportException.WrongKey::class.java) {
            FieldReportStore.open(File(tmp, "a").path, generateStoreKey())
        }
        assertThrows(FieldReportException.InvalidInput::class.java) {
            FieldReportStore.open(File(tmp, "a").path, ByteArray(16))
        }
        store("a").use { s ->
            assertEquals(1, s.listReports(null, 10u, null).size)
            s.wipe(true)
            assertThrows(FieldReportException.Wiped::class.java) { s.createReport() }
        }
        assertFalse(File(tmp, "a").exists())
    }

    @Test
    fun syncCancelsAndSupervisorHearsPushes() {
        TestStation().use { station ->
            store("officer").use { officer ->
                store("supervisor").use { sup ->
                    officer.enroll(station.url, station.code("Officer L. Test", "11041"))
                    sup.enroll(station.url, station.code("Sgt. L. Test", "900", role = "supervisor"))
                    val cancelled = SyncCancel().apply { cancel() }
                    assertThrows(FieldReportException.Cancelled::class.java) { officer.sync(cancelled) }

                    val heard = mutableListOf<ReportEvent>()
                    val listening = CountDownLatch(1)
                    val stop = SyncCancel()
                    val listener = Thread {
                        try {
                            listening.countDown()
                            sup.listen(stop) { ev -> heard.add(ev); false }
                        } catch (e: FieldReportException) {
                            // Cancelled by the test's timeout below.
                        }
                    }
                    listener.start()
                    listening.await()
                    val r = officer.createReport()
                    // Push until the listener has connected and heard it.
                    val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20)
                    while (listener.isAlive && System.nanoTime() < deadline) {
                        officer.set(r, "narrative", "update ${System.nanoTime()}")
                        officer.sync()
                        listener.join(300)
                    }
                    stop.cancel()
                    listener.join(20_000)
                    assertFalse(listener.isAlive)
                    assertEquals(r, heard.firstOrNull()?.reportId)
                    sup.sync()
                    assertNotNull(sup.report(r))
                }
            }
        }
    }
}
