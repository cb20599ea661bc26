// The Android library (AAR): the Kotlin binding's sources, the Android glue in this folder, and
// the native libraries that build-natives.sh puts in src/main/jniLibs. Built with the Android
// Gradle plugin; not part of this repository's CI (no Android SDK there).
plugins {
    id("com.android.library") version "8.13.0"
    id("org.jetbrains.kotlin.android") version "2.4.21"
}

android {
    namespace = "dev.backfill"
    compileSdk = 36
    defaultConfig {
        minSdk = 24
        // Shipped inside the AAR as proguard.txt and applied to every app that uses it.
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets["main"].java.srcDirs("../src/main/kotlin", "src/main/kotlin")
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    packaging {
        // Keep the .so files uncompressed and page-aligned inside the APK (Android 6+ maps them
        // in place).
        jniLibs.useLegacyPackaging = false
    }
}

kotlin { jvmToolchain(17) }

dependencies {
    // The "@aar" artifact carries JNA's own native dispatch library for each Android ABI.
    implementation("net.java.dev.jna:jna:5.19.1@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.11.0")
    implementation("androidx.work:work-runtime-ktx:2.11.0")
    implementation("androidx.lifecycle:lifecycle-process:2.10.0")
}
