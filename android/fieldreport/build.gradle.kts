// The FieldReport Android library: the Rust core (libfieldreport_ffi.so per
// ABI, built with cargo-ndk), its generated Kotlin bindings, and the
// idiomatic layer in src/main/kotlin.
//
// Generated code and native libraries are build outputs, never committed:
// `cargoBuild` and `generateBindings` below produce them before compilation.
// Needs the Android NDK and `cargo install cargo-ndk` plus the Rust targets
// aarch64-linux-android, armv7-linux-androideabi and x86_64-linux-android.
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

val repoRoot = rootDir.parentFile
val abis = listOf("arm64-v8a", "armeabi-v7a", "x86_64")
val jniOut = layout.buildDirectory.dir("rust/jniLibs")
val bindingsOut = layout.buildDirectory.dir("generated/source/uniffi/kotlin")

android {
    namespace = "org.fieldreport"
    compileSdk = 35
    defaultConfig {
        minSdk = 26
        consumerProguardFiles("consumer-rules.pro")
        ndk { abiFilters += abis }
    }
    sourceSets["main"].java.srcDir(bindingsOut)
    sourceSets["main"].jniLibs.srcDir(jniOut)
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    // uniffi's Kotlin bindings call the library through JNA.
    implementation("net.java.dev.jna:jna:5.14.0@aar")
    testImplementation("junit:junit:4.13.2")
}

// Release libraries in the size-optimised `mobile` profile (panics unwind,
// so the boundary can turn them into exceptions).
val cargoBuild by tasks.registering(Exec::class) {
    workingDir = repoRoot
    commandLine(
        listOf("cargo", "ndk") + abis.flatMap { listOf("-t", it) } +
            listOf("-o", jniOut.get().asFile.path, "build", "-p", "fieldreport-ffi", "--lib", "--profile", "mobile"),
    )
}

// Bindings come from a host build that still carries uniffi's metadata
// (the mobile profile strips it).
val generateBindings by tasks.registering(Exec::class) {
    workingDir = repoRoot
    commandLine(
        "bash", "-c",
        "cargo build -p fieldreport-ffi --lib && " +
            "cargo run -p fieldreport-ffi --example uniffi-bindgen -- generate --no-format " +
            "--library target/debug/libfieldreport_ffi.so -l kotlin -o '${bindingsOut.get().asFile.path}'",
    )
}

tasks.named("preBuild") { dependsOn(cargoBuild, generateBindings) }
