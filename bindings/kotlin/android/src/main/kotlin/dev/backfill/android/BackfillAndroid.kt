package dev.backfill.android

import android.content.Context
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.LifecycleOwner
import androidx.lifecycle.ProcessLifecycleOwner
import androidx.work.Constraints
import androidx.work.ExistingPeriodicWorkPolicy
import androidx.work.ExistingWorkPolicy
import androidx.work.NetworkType
import androidx.work.OneTimeWorkRequestBuilder
import androidx.work.PeriodicWorkRequestBuilder
import androidx.work.WorkManager
import dev.backfill.Backfill
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.launch

/**
 * Wires a [Backfill] into an Android app: the app's lifecycle, the network state and WorkManager.
 * Call [attach] once, from `Application.onCreate`, after creating the client:
 *
 * ```kotlin
 * class App : Application() {
 *     lateinit var backfill: Backfill
 *     override fun onCreate() {
 *         super.onCreate()
 *         backfill = Backfill(BackfillConfig(endpoint = "https://ingest.example.com",
 *             clientId = ID, clientSecret = SECRET, databasePath = File(filesDir, "events.db").path))
 *         BackfillAndroid.attach(this, backfill)
 *     }
 * }
 * ```
 *
 * - `ProcessLifecycleOwner`: when the last activity stops, [Backfill.onBackground] drains with a
 *   deadline (off the main thread); when one starts again, [Backfill.onForeground].
 * - `ConnectivityManager`: the default network's validated internet capability drives
 *   [Backfill.setOnline], so the SDK stops trying (and spending battery) while offline.
 * - WorkManager: [BackfillDrainWorker] drains every 15 minutes (the platform's shortest period)
 *   and once after each trip to the background, only when a network is connected, surviving
 *   process death and reboots.
 */
object BackfillAndroid {
    @Volatile
    private var client: Backfill? = null

    /** The client given to [attach]; the drain worker uses it. */
    val instance: Backfill?
        get() = client

    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.IO)

    /** Registers the lifecycle observer, the network callback and the periodic drain. */
    fun attach(context: Context, backfill: Backfill) {
        val app = context.applicationContext
        client = backfill

        ProcessLifecycleOwner.get().lifecycle.addObserver(object : DefaultLifecycleObserver {
            override fun onStart(owner: LifecycleOwner) {
                scope.launch { backfill.onForeground() }
            }

            override fun onStop(owner: LifecycleOwner) {
                // The process may be frozen soon: drain now within the deadline, and leave the
                // rest to a worker that runs once a network is there.
                scope.launch { backfill.onBackground() }
                scheduleOneTimeDrain(app)
            }
        })

        val connectivity = app.getSystemService(ConnectivityManager::class.java)
        connectivity.registerDefaultNetworkCallback(object : ConnectivityManager.NetworkCallback() {
            override fun onCapabilitiesChanged(network: Network, caps: NetworkCapabilities) {
                backfill.setOnline(
                    caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET) &&
                        caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_VALIDATED)
                )
            }

            override fun onLost(network: Network) {
                backfill.setOnline(false)
            }
        })
        // Until the first callback arrives, start from what the system knows now.
        val caps = connectivity.getNetworkCapabilities(connectivity.activeNetwork)
        backfill.setOnline(caps?.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET) == true)

        WorkManager.getInstance(app).enqueueUniquePeriodicWork(
            PERIODIC_WORK,
            ExistingPeriodicWorkPolicy.KEEP,
            PeriodicWorkRequestBuilder<BackfillDrainWorker>(15, TimeUnit.MINUTES)
                .setConstraints(networkConstraint())
                .build(),
        )
    }

    private fun scheduleOneTimeDrain(context: Context) {
        WorkManager.getInstance(context).enqueueUniqueWork(
            ONE_TIME_WORK,
            ExistingWorkPolicy.REPLACE,
            OneTimeWorkRequestBuilder<BackfillDrainWorker>().setConstraints(networkConstraint()).build(),
        )
    }

    private fun networkConstraint() =
        Constraints.Builder().setRequiredNetworkType(NetworkType.CONNECTED).build()

    private const val PERIODIC_WORK = "dev.backfill.drain.periodic"
    private const val ONE_TIME_WORK = "dev.backfill.drain.now"
}
