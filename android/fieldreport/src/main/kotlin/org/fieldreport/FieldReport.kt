// The idiomatic Kotlin layer over the generated bindings
// (org.fieldreport.ffi, generated at build time from the Rust library).
//
// Every call blocks: run it off the main thread, e.g.
// `withContext(Dispatchers.IO) { store.sync { p -> ... } }`.
package org.fieldreport

import java.io.File
import java.time.Instant
import org.fieldreport.ffi.EventListener
import org.fieldreport.ffi.FieldReportStore
import org.fieldreport.ffi.FieldValue
import org.fieldreport.ffi.MediaInfo
import org.fieldreport.ffi.AttachedMedia
import org.fieldreport.ffi.ReportEvent
import org.fieldreport.ffi.SyncCancel
import org.fieldreport.ffi.SyncListener
import org.fieldreport.ffi.SyncProgress
import org.fieldreport.ffi.SyncSummary

/**
 * Opens the store in [dir], encrypted with [key] (32 bytes: keep them
 * wrapped by an Android Keystore key), runs [block] and closes the store.
 */
inline fun <T> withStore(dir: File, key: ByteArray, block: (FieldReportStore) -> T): T =
    FieldReportStore.open(dir.path, key).use(block)

/** A media file's bytes, decrypted (a photo: one call). */
fun FieldReportStore.mediaBytes(sha256: String): ByteArray =
    readMedia(sha256, 0uL, UInt.MAX_VALUE)

/** A [FieldValue] from a plain Kotlin value. */
fun fieldValue(value: Any?): FieldValue = when (value) {
    null -> FieldValue.Null
    is FieldValue -> value
    is String -> FieldValue.Text(value)
    is Boolean -> FieldValue.Bool(value)
    is Int -> FieldValue.Int(value.toLong())
    is Long -> FieldValue.Int(value)
    is Double -> FieldValue.Float(value)
    is Instant -> FieldValue.Time(value.toEpochMilli())
    is List<*> -> FieldValue.TextList(value.map { it as? String ?: throw IllegalArgumentException("lists hold strings") })
    else -> throw IllegalArgumentException("no field value for ${value::class.simpleName}")
}

/** The text of a `Text` value, else null. */
val FieldValue?.text: String? get() = (this as? FieldValue.Text)?.value

/** The instant of a `Time` value, else null. */
val FieldValue?.instant: Instant? get() = (this as? FieldValue.Time)?.let { Instant.ofEpochMilli(it.epochMs) }

/** Sets a field from a plain Kotlin value (String, Boolean, Long, Double, Instant, List<String> or null). */
fun FieldReportStore.set(reportId: String, path: String, value: Any?) =
    setField(reportId, path, fieldValue(value))

/** Adds an entry from plain Kotlin values; returns its id. */
fun FieldReportStore.add(reportId: String, collection: String, vararg fields: Pair<String, Any?>): String =
    addEntry(reportId, collection, fields.associate { (k, v) -> k to fieldValue(v) })

/** Attaches a file (a photo the camera wrote) to a report. */
fun FieldReportStore.attach(reportId: String, file: File, mimeType: String, capturedAt: Instant? = null): AttachedMedia =
    attachMedia(reportId, file.path, MediaInfo(mimeType, file.name, capturedAt?.toEpochMilli(), null, null, null))

/** Syncs with the station, reporting progress to a plain lambda. */
fun FieldReportStore.sync(cancel: SyncCancel? = null, onProgress: (SyncProgress) -> Unit = {}): SyncSummary =
    sync(object : SyncListener {
        override fun onProgress(progress: SyncProgress) = onProgress(progress)
    }, cancel)

/**
 * Listens to the station's live report events until [onEvent] returns false
 * or [cancel] is set (checked at least every 15 s).
 */
fun FieldReportStore.listen(cancel: SyncCancel, onEvent: (ReportEvent) -> Boolean) =
    listenEvents(object : EventListener {
        override fun onEvent(event: ReportEvent): Boolean = onEvent(event)
    }, cancel)
