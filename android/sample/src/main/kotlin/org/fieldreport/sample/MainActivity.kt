package org.fieldreport.sample

import android.net.Uri
import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.ProgressBar
import android.widget.TextView
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.core.content.FileProvider
import androidx.lifecycle.lifecycleScope
import java.io.File
import java.time.Instant
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.fieldreport.attach
import org.fieldreport.ffi.FieldReportException
import org.fieldreport.ffi.FieldReportStore
import org.fieldreport.ffi.SyncCancel
import org.fieldreport.set
import org.fieldreport.sync

/** Capture a report offline (narrative and photos) and sync it. */
class MainActivity : AppCompatActivity() {
    private lateinit var store: FieldReportStore
    private var reportId: String? = null
    private var pendingPhoto: File? = null
    private val cancel = SyncCancel()

    private val takePicture = registerForActivityResult(ActivityResultContracts.TakePicture()) { ok ->
        val file = pendingPhoto ?: return@registerForActivityResult
        if (ok) work("Photo attached") {
            store.attach(report(), file, "image/jpeg", Instant.now())
            file.delete() // The store keeps its own copy.
        }
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        // App-private storage; the store is opened once per process.
        store = FieldReportStore.open(File(filesDir, "fieldreport").path, StoreKey.get(this))

        findViewById<Button>(R.id.enroll).setOnClickListener {
            val url = findViewById<EditText>(R.id.station).text.toString()
            val code = findViewById<EditText>(R.id.code).text.toString()
            work("Enrolled") { store.enroll(url, code) }
        }
        findViewById<Button>(R.id.save).setOnClickListener {
            val text = findViewById<EditText>(R.id.narrative).text.toString()
            work("Saved on this phone") { store.set(report(), "narrative", text) }
        }
        findViewById<Button>(R.id.photo).setOnClickListener {
            val dir = File(cacheDir, "photos").apply { mkdirs() }
            val file = File.createTempFile("photo", ".jpg", dir).also { pendingPhoto = it }
            val uri: Uri = FileProvider.getUriForFile(this, "org.fieldreport.sample.photos", file)
            takePicture.launch(uri)
        }
        findViewById<Button>(R.id.sync).setOnClickListener {
            val bar = findViewById<ProgressBar>(R.id.progress)
            work("Synced") {
                val summary = store.sync(cancel) { p ->
                    runOnUiThread {
                        bar.max = p.bytesTotal.coerceAtLeast(p.itemsTotal).toInt().coerceAtLeast(1)
                        bar.progress = p.bytesDone.coerceAtLeast(p.itemsDone).toInt()
                    }
                }
                "sent ${summary.pushed}, received ${summary.pulled}"
            }
        }
    }

    override fun onDestroy() {
        cancel.cancel()
        super.onDestroy()
    }

    private fun report(): String = reportId ?: store.createReport().also { reportId = it }

    /** Runs a blocking library call off the main thread; errors become a message. */
    private fun work(done: String, call: () -> Any?) {
        val status = findViewById<TextView>(R.id.status)
        lifecycleScope.launch {
            val message = try {
                val result = withContext(Dispatchers.IO) { call() }
                if (result is String) "$done: $result" else done
            } catch (e: FieldReportException.NotEnrolled) {
                "Enroll this phone with the station first"
            } catch (e: FieldReportException.Network) {
                "No connection; your report is saved on this phone"
            } catch (e: FieldReportException) {
                e.message ?: "Error"
            }
            status.text = message
        }
    }
}
