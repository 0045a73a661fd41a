import FieldReport
import PhotosUI
import SwiftUI

@MainActor
final class Capture: ObservableObject {
    @Published var status = ""
    @Published var progress = 0.0
    private let store: FieldReportStore?
    private var reportId: String?
    private let cancel = SyncCancel()

    init() {
        let dir = FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask)[0]
            .appendingPathComponent("fieldreport")
        store = (try? Self.storeKey()).flatMap { try? FieldReportStore.open(at: dir, key: $0) }
    }

    /// The store key, kept in the Keychain for this device only; created
    /// on first launch. Deleting it after a wipe leaves nothing readable.
    static func storeKey() throws -> Data {
        let query: [String: Any] = [
            kSecClass as String: kSecClassGenericPassword,
            kSecAttrService as String: "org.fieldreport.store-key",
            kSecReturnData as String: true,
        ]
        var item: CFTypeRef?
        if SecItemCopyMatching(query as CFDictionary, &item) == errSecSuccess, let data = item as? Data {
            return data
        }
        let key = try generateStoreKey()
        let add: [String: Any] = [
            kSecClass as String: kSecClassGenericPassword,
            kSecAttrService as String: "org.fieldreport.store-key",
            kSecAttrAccessible as String: kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly,
            kSecValueData as String: key,
        ]
        SecItemAdd(add as CFDictionary, nil)
        return key
    }

    /// Runs a blocking library call off the main actor; errors become a message.
    func work(_ done: String, _ call: @escaping @Sendable (FieldReportStore) throws -> String?) {
        guard let store else { status = "The store could not be opened"; return }
        Task {
            do {
                let result = try await Task.detached { try call(store) }.value
                status = result.map { "\(done): \($0)" } ?? done
            } catch FieldReportError.NotEnrolled {
                status = "Enroll this phone with the station first"
            } catch FieldReportError.Network {
                status = "No connection; your report is saved on this phone"
            } catch {
                status = "\(error)"
            }
        }
    }

    func report(_ store: FieldReportStore) throws -> String {
        if let id = reportId { return id }
        let id = try store.createReport()
        reportId = id
        return id
    }

    func enroll(url: String, code: String) {
        work("Enrolled") { store in _ = try store.enroll(stationUrl: url, code: code); return nil }
    }

    func save(narrative: String) {
        let id = reportId
        work("Saved on this phone") { [weak self] store in
            let r = try id ?? store.createReport()
            try store.set(r, "narrative", .text(value: narrative))
            Task { @MainActor in self?.reportId = r }
            return nil
        }
    }

    func attach(photo: Data) {
        let id = reportId
        work("Photo attached") { store in
            let file = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString + ".jpg")
            try photo.write(to: file)
            defer { try? FileManager.default.removeItem(at: file) } // The store keeps its own copy.
            let r = try id ?? store.createReport()
            _ = try store.attach(r, file: file, mimeType: "image/jpeg", capturedAt: Date())
            return nil
        }
    }

    func sync() {
        let cancel = self.cancel
        work("Synced") { [weak self] store in
            let s = try store.sync(cancel: cancel) { p in
                let total = max(p.bytesTotal, p.itemsTotal, 1)
                let done = max(p.bytesDone, p.itemsDone)
                Task { @MainActor in self?.progress = Double(done) / Double(total) }
            }
            return "sent \(s.pushed), received \(s.pulled)"
        }
    }
}

struct ContentView: View {
    @StateObject private var capture = Capture()
    @State private var url = ""
    @State private var code = ""
    @State private var narrative = ""
    @State private var photo: PhotosPickerItem?

    var body: some View {
        Form {
            Section("Station") {
                TextField("Station URL", text: $url).textInputAutocapitalization(.never)
                TextField("Enrollment code", text: $code)
                Button("Enroll") { capture.enroll(url: url, code: code) }
            }
            Section("Report") {
                TextEditor(text: $narrative).frame(minHeight: 160)
                Button("Save") { capture.save(narrative: narrative) }
                PhotosPicker("Photo", selection: $photo, matching: .images)
            }
            Section {
                Button("Sync") { capture.sync() }
                ProgressView(value: capture.progress)
                Text(capture.status)
            }
        }
        .onChange(of: photo) { item in
            Task {
                if let data = try? await item?.loadTransferable(type: Data.self) {
                    capture.attach(photo: data)
                }
            }
        }
    }
}
