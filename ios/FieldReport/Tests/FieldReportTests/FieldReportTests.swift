import Foundation
import XCTest
@testable import FieldReport

final class FieldReportTests: XCTestCase {
    var tmp: URL!
    let badge = "supervisory_federal_officer.badge_number"

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("fr-swift-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: tmp)
    }

    let key = try! generateStoreKey()

    func store(_ name: String) throws -> FieldReportStore {
        try FieldReportStore.open(at: tmp.appendingPathComponent(name), key: key)
    }

    func photo(bytes: Int, seed: UInt64) throws -> URL {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var data = Data(count: bytes)
        for i in 0..<bytes {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            data[i] = UInt8(truncatingIfNeeded: state)
        }
        let url = tmp.appendingPathComponent("photo-\(seed).jpg")
        try data.write(to: url)
        return url
    }

    func testCaptureOfflineConflictSyncAndResolve() throws {
        let station = try TestStation()
        let phone = try store("phone")
        let tablet = try store("tablet")
        // One officer, two devices.
        let me = try phone.enroll(stationUrl: station.url, code: station.code(name: "Officer K. Test", star: "11021"), stationPin: station.pin)
        XCTAssertEqual(try phone.stationPin(), station.pin)
        XCTAssertEqual(me.role, "officer")
        _ = try tablet.enroll(stationUrl: station.url, code: station.code(name: "Officer K. Test", star: "11021"))

        // Offline capture on the phone.
        let r = try phone.createReport()
        try phone.set(r, "occurred.start", .date(Date(timeIntervalSince1970: 1_795_000_000)))
        try phone.set(r, "location.address", "W 26th St & S Pulaski Rd")
        try phone.set(r, "federal_agencies", .textList(items: ["ice"]))
        try phone.set(r, "narrative", "Agents detained a man at the bus stop.")
        let agent = try phone.add(r, to: "agents", ["badge_number": "A-17"])
        let img = try photo(bytes: 300_000, seed: 1)
        let attached = try phone.attach(r, file: img, mimeType: "image/jpeg", capturedAt: Date())
        XCTAssertEqual(attached.size, 300_000)
        try phone.set(r, badge, "4470")
        XCTAssertEqual(try phone.field(reportId: r, path: "agents/\(agent)/badge_number")?.text, "A-17")
        XCTAssertGreaterThan(try phone.unsyncedCount(), 0)

        var phases: [SyncPhase] = []
        let up = try phone.sync { phases.append($0.phase) }
        XCTAssertEqual(up.mediaUploaded, 1)
        XCTAssertGreaterThanOrEqual(up.pushed, 7)
        XCTAssertEqual(try phone.unsyncedCount(), 0)
        XCTAssertTrue(phases.contains(.uploadMedia) && phases.contains(.push))
        XCTAssertEqual(phases.last, .done)

        // The station's receipts: one per change pushed, each into a
        // checkpoint the phone holds.
        let checkpoint = try XCTUnwrap(try phone.logCheckpoint())
        XCTAssertTrue(checkpoint.hasPrefix("fieldreport/"))
        let receipts = try phone.logReceipts(reportId: r)
        XCTAssertEqual(UInt64(receipts.count), up.pushed)
        XCTAssertTrue(receipts.allSatisfy { $0.logIndex < $0.treeSize && !$0.proof.isEmpty })
        // A checkpoint altered after signing is not the station's: refused
        // as bad input; the phone keeps the one it held.
        var lines = checkpoint.components(separatedBy: "\n")
        lines[1] = String(UInt64(lines[1])! + 1)
        XCTAssertThrowsError(try phone.observeLogCheckpoint(note: lines.joined(separator: "\n"))) { e in
            guard case let FieldReportError.InvalidInput(reason) = e, reason.contains("not signed") else {
                return XCTFail("\(e)")
            }
        }
        XCTAssertEqual(try phone.logCheckpoint(), checkpoint)

        // The tablet gets the report and the photo.
        let down = try tablet.sync()
        XCTAssertEqual(down.mediaDownloaded, 1)
        XCTAssertEqual(try phone.report(reportId: r).json, try tablet.report(reportId: r).json)
        let media = try tablet.report(reportId: r).media
        XCTAssertEqual(media.count, 1)
        XCTAssertEqual(media[0].sha256, attached.sha256)
        XCTAssertTrue(media[0].storedLocally)
        XCTAssertEqual(try tablet.mediaBytes(media[0].sha256!), try Data(contentsOf: img))

        // Concurrent offline edits of one field.
        try phone.set(r, badge, "4471")
        try tablet.set(r, badge, "4417")
        try phone.sync()
        try tablet.sync()
        try phone.sync()
        let conflicts = try phone.report(reportId: r).conflicts.filter { $0.path == badge }
        XCTAssertEqual(conflicts.count, 1)
        XCTAssertEqual(Set(conflicts[0].values.compactMap { $0.value.text }), ["4471", "4417"])
        XCTAssertEqual(try phone.report(reportId: r).json, try tablet.report(reportId: r).json)

        // Resolve on the phone; the tablet sees it, the history keeps all.
        try phone.resolveConflict(reportId: r, path: badge, value: "4471-B")
        try phone.sync()
        try tablet.sync()
        XCTAssertTrue(try tablet.report(reportId: r).conflicts.allSatisfy { $0.path != badge })
        XCTAssertEqual(try tablet.field(reportId: r, path: badge)?.text, "4471-B")
        let history = try tablet.fieldHistory(reportId: r, path: badge).compactMap { $0.value?.text }
        XCTAssertTrue(Set(history).isSuperset(of: ["4470", "4471", "4417", "4471-B"]))
        XCTAssertEqual(try tablet.listReports(lifecycle: nil, limit: 0, after: nil).map { $0.id }, [r])
    }

    func testAStationRestoredFromAnOlderCopyIsRefusedAndTheOutboxKept() throws {
        let station = try TestStation()
        let phone = try store("restored")
        _ = try phone.enroll(stationUrl: station.url, code: station.code(name: "Officer R. Test", star: "11031"), stationPin: station.pin)
        let r = try phone.createReport()
        try phone.set(r, "narrative", "First.")
        _ = try phone.sync()
        try station.stop()
        let older = try station.snapshot()
        try station.start()
        try phone.set(r, "narrative", "Second.")
        _ = try phone.sync()
        let held = try phone.logCheckpoint()
        // The station's data put back from the older copy.
        try station.stop()
        try station.restore(older)
        try station.start()
        try phone.set(r, "narrative", "Third.")
        let waiting = try phone.unsyncedCount()
        XCTAssertThrowsError(try phone.sync()) { e in
            guard case let FieldReportError.StationLogInconsistent(reason) = e,
                  reason.contains("shrank") || reason.contains("two different trees") else {
                return XCTFail("\(e)")
            }
        }
        XCTAssertEqual(try phone.unsyncedCount(), waiting)
        XCTAssertEqual(try phone.logCheckpoint(), held)
    }

    func testErrorsArriveAsSwiftErrors() throws {
        let s = try store("a")
        XCTAssertThrowsError(try s.createReport()) { e in
            guard case FieldReportError.NotEnrolled = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try s.enroll(stationUrl: "http://127.0.0.1:1", code: "nope")) { e in
            guard case FieldReportError.Network = e else { return XCTFail("\(e)") }
        }
        XCTAssertNil(s.identity())
        let station = try TestStation()
        XCTAssertThrowsError(try s.enroll(stationUrl: station.url, code: "wrong-code")) { e in
            guard case let FieldReportError.Station(status, _) = e, status == 422 else { return XCTFail("\(e)") }
        }
        // Another key than the one printed with the code: refused before the code is sent.
        let code = try station.code(name: "Officer E. Test", star: "11022")
        let otherKey = "sha256//" + String(repeating: "A", count: 43) + "="
        XCTAssertThrowsError(try s.enroll(stationUrl: station.url, code: code, stationPin: otherKey)) { e in
            guard case FieldReportError.StationPinMismatch = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try s.enroll(stationUrl: "http://192.0.2.1:8787", code: code)) { e in
            guard case FieldReportError.InvalidInput = e else { return XCTFail("\(e)") }
        }
        XCTAssertNil(s.identity())
        _ = try s.enroll(stationUrl: station.url, code: code, stationPin: station.pin)
        let r = try s.createReport()
        XCTAssertThrowsError(try s.set(r, "no_such_field", "x")) { e in
            guard case FieldReportError.InvalidInput = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try s.set(r, "narrative", true)) { e in
            guard case FieldReportError.InvalidInput = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try s.report(reportId: "not-a-uuid")) { e in
            guard case FieldReportError.InvalidInput = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try s.report(reportId: "00000000-0000-4000-8000-000000000000")) { e in
            guard case FieldReportError.NotFound = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try s.attach(r, file: tmp.appendingPathComponent("missing.jpg"), mimeType: "image/jpeg")) { e in
            guard case FieldReportError.MediaUnreadable = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try s.submit(reportId: r)) { e in
            guard case let FieldReportError.MissingRequired(fields) = e, fields.contains("occurred.start") else {
                return XCTFail("\(e)")
            }
        }
        // A refused call changed nothing.
        XCTAssertNil(try s.field(reportId: r, path: "narrative"))
        XCTAssertTrue(try s.report(reportId: r).media.isEmpty)
        // Witnesses to require: a key that is not one is bad input, and none are kept.
        XCTAssertThrowsError(try s.setRequiredWitnesses(witnesses: ["not a key"], quorum: 1)) { e in
            guard case FieldReportError.InvalidInput = e else { return XCTFail("\(e)") }
        }
        XCTAssertNil(try s.witnessStatus())
        // Sign out and wipe refuses while work is unsynced.
        XCTAssertThrowsError(try s.wipe(force: false)) { e in
            guard case let FieldReportError.UnsyncedWork(changes, _) = e, changes >= 1 else { return XCTFail("\(e)") }
        }
        // The wrong key is a typed error.
        XCTAssertThrowsError(try FieldReportStore.open(at: tmp.appendingPathComponent("a"), key: try generateStoreKey())) { e in
            guard case FieldReportError.WrongKey = e else { return XCTFail("\(e)") }
        }
        _ = try s.wipe(force: true)
        XCTAssertThrowsError(try s.createReport()) { e in
            guard case FieldReportError.Wiped = e else { return XCTFail("\(e)") }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp.appendingPathComponent("a").path))
    }

    func testPanicInRustArrivesAsSwiftError() throws {
        XCTAssertThrowsError(try debugTriggerPanic()) { e in
            guard case FieldReportError.Internal = e else { return XCTFail("\(e)") }
        }
        XCTAssertNil(try store("after-panic").identity())
    }

    func testObjectsDroppedFromPlainThreads() throws {
        let station = try TestStation()
        for i in 0..<4 {
            var s: FieldReportStore? = try store("drop-\(i)")
            _ = try s!.enroll(stationUrl: station.url, code: station.code(name: "Officer D. Test", star: "1103\(i)"))
            let r = try s!.createReport()
            try s!.set(r, "narrative", "x")
            try s!.sync()
            let box = Box()
            box.store = s
            box.cancel = SyncCancel()
            s = nil
            let done = DispatchSemaphore(value: 0)
            // The last references go away on a plain thread: deinit runs there.
            let t = Thread {
                box.store = nil
                box.cancel = nil
                done.signal()
            }
            t.start()
            done.wait()
        }
        Thread.sleep(forTimeInterval: 0.2)
        XCTAssertEqual(try store("drop-0").listReports(lifecycle: nil, limit: 0, after: nil).count, 1)
    }

    func testSyncCancelsAndSupervisorHearsPushes() throws {
        let station = try TestStation()
        let officer = try store("officer")
        let sup = try store("supervisor")
        _ = try officer.enroll(stationUrl: station.url, code: station.code(name: "Officer L. Test", star: "11041"))
        _ = try sup.enroll(stationUrl: station.url, code: station.code(name: "Sgt. L. Test", star: "900", role: "supervisor"))
        let cancelled = SyncCancel()
        cancelled.cancel()
        XCTAssertThrowsError(try officer.sync(cancel: cancelled)) { e in
            guard case FieldReportError.Cancelled = e else { return XCTFail("\(e)") }
        }

        let heard = Heard()
        let stop = SyncCancel()
        let finished = DispatchSemaphore(value: 0)
        let listener = Thread {
            try? sup.listen(cancel: stop) { ev in heard.add(ev.reportId); return false }
            finished.signal()
        }
        listener.start()
        let r = try officer.createReport()
        let deadline = Date().addingTimeInterval(20)
        var done = false
        while !done && Date() < deadline {
            try officer.set(r, "narrative", .text(value: "update \(Date().timeIntervalSince1970)"))
            try officer.sync()
            done = finished.wait(timeout: .now() + 0.3) == .success
        }
        if !done {
            stop.cancel()
            _ = finished.wait(timeout: .now() + 20)
        }
        XCTAssertEqual(heard.first, r)
        try sup.sync()
        XCTAssertEqual(try sup.report(reportId: r).id, r)
    }
}

final class Box: @unchecked Sendable {
    var store: FieldReportStore?
    var cancel: SyncCancel?
}

final class Heard: @unchecked Sendable {
    private let lock = NSLock()
    private var ids: [String] = []
    func add(_ id: String) { lock.lock(); ids.append(id); lock.unlock() }
    var first: String? { lock.lock(); defer { lock.unlock() }; return ids.first }
}
