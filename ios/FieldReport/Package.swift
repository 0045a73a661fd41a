// swift-tools-version:5.9
// FieldReport for iOS: the generated uniffi bindings (FieldReportFFI over the
// C module FieldReportFFIC) and an idiomatic Swift layer (FieldReport).
//
// The generated sources and the library are build outputs:
// `bash scripts/bindings.sh swift` (from the repository root) writes them
// into Sources/FieldReportFFI and Sources/FieldReportFFIC. For an app, link
// the static library `libfieldreport_ffi.a` built for the iOS targets
// (packaged as an XCFramework); see ios/README.md.
import PackageDescription

let package = Package(
    name: "FieldReport",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "FieldReport", targets: ["FieldReport"]),
    ],
    targets: [
        .systemLibrary(name: "FieldReportFFIC", path: "Sources/FieldReportFFIC"),
        .target(
            name: "FieldReportFFI",
            dependencies: ["FieldReportFFIC"],
            path: "Sources/FieldReportFFI",
            linkerSettings: [.linkedLibrary("fieldreport_ffi")]
        ),
        .target(name: "FieldReport", dependencies: ["FieldReportFFI"]),
        .testTarget(name: "FieldReportTests", dependencies: ["FieldReport"]),
    ]
)
