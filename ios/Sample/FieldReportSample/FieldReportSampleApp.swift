// A small sample app: capture a report offline (narrative and a photo) and
// sync it with a station. Add it to an Xcode iOS app target that depends on
// the FieldReport package (../../FieldReport).
import FieldReport
import SwiftUI

@main
struct FieldReportSampleApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}
