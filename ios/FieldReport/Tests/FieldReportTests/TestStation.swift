import Foundation

/// A real station process on a free loopback port, for the tests.
final class TestStation {
    let bin: String
    let dir: URL
    var process: Process
    let url: String
    /// The key pin the station prints (`sha256//…`), checked at enrollment.
    let pin: String

    init() throws {
        guard let bin = ProcessInfo.processInfo.environment["FR_STATION_BIN"] else {
            throw NSError(domain: "TestStation", code: 1, userInfo: [NSLocalizedDescriptionKey: "FR_STATION_BIN is not set"])
        }
        self.bin = bin
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("fr-station-\(UUID().uuidString)")
        let (p, pin, url) = try TestStation.launch(bin: bin, dir: dir, listen: "127.0.0.1:0")
        process = p
        self.pin = pin
        self.url = url
    }

    /// Starts the station on `listen`; its process, pin and URL.
    private static func launch(bin: String, dir: URL, listen: String) throws -> (Process, String, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: bin)
        process.arguments = ["serve", "--data", dir.path, "--listen", listen]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        // "station pin: …", then "serving on https://…".
        var text = ""
        while !text.contains("serving on ") || !text.hasSuffix("\n") {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        guard let range = text.range(of: "serving on "), let pinRange = text.range(of: "station pin: ") else {
            throw NSError(domain: "TestStation", code: 2, userInfo: [NSLocalizedDescriptionKey: "station did not start"])
        }
        let url = text[range.upperBound...].split(separator: "\n")[0].trimmingCharacters(in: .whitespaces)
        let pin = text[pinRange.upperBound...].split(separator: "\n")[0].trimmingCharacters(in: .whitespaces)
        return (process, pin, url)
    }

    /// Stops the station (its data stays).
    func stop() throws {
        process.terminate()
        process.waitUntilExit()
    }

    /// Starts it again on the same address and data directory.
    func start() throws {
        let (p, _, u) = try TestStation.launch(bin: bin, dir: dir, listen: String(url.dropFirst("https://".count)))
        guard u == url else {
            throw NSError(domain: "TestStation", code: 4, userInfo: [NSLocalizedDescriptionKey: "the station came back on \(u)"])
        }
        process = p
    }

    /// A copy of the (stopped) station's data directory.
    func snapshot() throws -> URL {
        let copy = FileManager.default.temporaryDirectory.appendingPathComponent("fr-station-copy-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: dir, to: copy)
        return copy
    }

    /// Puts a snapshot back in place of the (stopped) station's data: a
    /// database restored from an older backup.
    func restore(_ copy: URL) throws {
        try FileManager.default.removeItem(at: dir)
        try FileManager.default.moveItem(at: copy, to: dir)
    }

    /// A one-time enrollment code for a person.
    func code(name: String, star: String, role: String = "officer", unit: String = "District 9") throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin)
        p.arguments = ["enroll", "--data", dir.path, "--name", name, "--star", star, "--role", role, "--unit", unit]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard p.terminationStatus == 0,
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("enrollment code:") })
        else {
            throw NSError(domain: "TestStation", code: 3, userInfo: [NSLocalizedDescriptionKey: "enroll failed"])
        }
        return line.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces)
    }

    deinit {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: dir)
    }
}
