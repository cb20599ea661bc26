// swift-tools-version:5.9
// The Swift binding: the C declarations of the Rust library (BackfillFFI), the uniffi-generated
// Swift (BackfillBindings, internal to the package's users in spirit: import Backfill instead) and
// the hand-written API (Backfill).
//
// On iOS the Rust library comes as BackfillFFI.xcframework (ios/build-xcframework.sh). On Linux and
// macOS, for development and `swift test`, it is the library cargo built for the host:
//   cargo build -p backfill-ffi -p backfill-server
//   swift test --package-path bindings/swift -Xlinker -L../../target/debug
import Foundation
import PackageDescription

let packageDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path
let xcframework = packageDir + "/BackfillFFI.xcframework"

let ffiTarget: Target = FileManager.default.fileExists(atPath: xcframework)
    ? .binaryTarget(name: "BackfillFFI", path: "BackfillFFI.xcframework")
    : .systemLibrary(name: "BackfillFFI", path: "Sources/BackfillFFI")

let package = Package(
    name: "Backfill",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Backfill", targets: ["Backfill"]),
    ],
    targets: [
        ffiTarget,
        .target(
            name: "BackfillBindings",
            dependencies: ["BackfillFFI"],
            path: "Sources/BackfillBindings"
        ),
        .target(
            name: "Backfill",
            dependencies: ["BackfillBindings"],
            path: "Sources/Backfill"
        ),
        .testTarget(
            name: "BackfillTests",
            dependencies: ["Backfill"],
            path: "Tests/BackfillTests"
        ),
    ]
)
