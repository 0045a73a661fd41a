// The idiomatic Swift layer over the generated bindings.
//
// Every call blocks: run it off the main actor, e.g.
// `try await Task.detached { try store.sync { p in ... } }.value`.
import Foundation
@_exported import FieldReportFFI

extension FieldValue: ExpressibleByStringLiteral, ExpressibleByBooleanLiteral, ExpressibleByNilLiteral {
    public init(stringLiteral value: String) { self = .text(value: value) }
    public init(booleanLiteral value: Bool) { self = .bool(value: value) }
    public init(nilLiteral: ()) { self = .null }

    /// A `time` value from a `Date`.
    public static func date(_ date: Date) -> FieldValue {
        .time(epochMs: Int64((date.timeIntervalSince1970 * 1000).rounded()))
    }

    /// The text of a `text` value, else nil.
    public var text: String? {
        if case let .text(value) = self { return value }
        return nil
    }

    /// The date of a `time` value, else nil.
    public var date: Date? {
        if case let .time(ms) = self { return Date(timeIntervalSince1970: Double(ms) / 1000) }
        return nil
    }
}

/// Adapts a closure to the generated listener protocols.
final class ClosureSyncListener: SyncListener, @unchecked Sendable {
    let body: (SyncProgress) -> Void
    init(_ body: @escaping (SyncProgress) -> Void) { self.body = body }
    func onProgress(progress: SyncProgress) { body(progress) }
}

final class ClosureEventListener: EventListener, @unchecked Sendable {
    let body: (ReportEvent) -> Bool
    init(_ body: @escaping (ReportEvent) -> Bool) { self.body = body }
    func onEvent(event: ReportEvent) -> Bool { body(event) }
}

extension FieldReportStore {
    /// Opens (creating if needed) the store in a directory, encrypted with
    /// `key` (32 bytes: keep them in the Keychain).
    public static func open(at url: URL, key: Data) throws -> FieldReportStore {
        try FieldReportStore.open(dir: url.path, key: key)
    }

    /// A media file's bytes, decrypted (a photo: one call).
    public func mediaBytes(_ sha256: String) throws -> Data {
        try readMedia(sha256: sha256, offset: 0, length: UInt32.max)
    }

    /// Sets a field; `value` may be a literal (`"text"`, `true`, `nil`).
    public func set(_ reportId: String, _ path: String, _ value: FieldValue) throws {
        try setField(reportId: reportId, path: path, value: value)
    }

    /// Adds an entry to a collection; returns its id.
    public func add(_ reportId: String, to collection: String, _ fields: [String: FieldValue]) throws -> String {
        try addEntry(reportId: reportId, collection: collection, fields: fields)
    }

    /// Attaches a file (a photo the camera wrote) to a report.
    public func attach(_ reportId: String, file: URL, mimeType: String, capturedAt: Date? = nil) throws -> AttachedMedia {
        try attachMedia(
            reportId: reportId, path: file.path,
            info: MediaInfo(
                mimeType: mimeType, fileName: file.lastPathComponent,
                capturedAtMs: capturedAt.map { Int64(($0.timeIntervalSince1970 * 1000).rounded()) },
                latitude: nil, longitude: nil, caption: nil))
    }

    /// Syncs with the station, reporting progress to a closure.
    @discardableResult
    public func sync(cancel: SyncCancel? = nil, progress: @escaping (SyncProgress) -> Void = { _ in }) throws -> SyncSummary {
        try sync(listener: ClosureSyncListener(progress), cancel: cancel)
    }

    /// Listens to the station's live report events until the closure
    /// returns false or `cancel` is set (checked at least every 15 s).
    public func listen(cancel: SyncCancel, _ onEvent: @escaping (ReportEvent) -> Bool) throws {
        try listenEvents(listener: ClosureEventListener(onEvent), cancel: cancel)
    }
}
