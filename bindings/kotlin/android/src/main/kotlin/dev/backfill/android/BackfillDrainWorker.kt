package dev.backfill.android

import android.content.Context
import androidx.work.CoroutineWorker
import androidx.work.WorkerParameters
import dev.backfill.BackfillException
import dev.backfill.DrainEnd

/**
 * Drains the buffer from WorkManager, which runs it only while a network is connected (the
 * constraint set by [BackfillAndroid.attach]) and retries it with its own backoff.
 *
 * The client is the one given to [BackfillAndroid.attach]: when WorkManager starts the process for
 * this worker, `Application.onCreate` runs first and attaches it. Without one, there is nothing to
 * drain and the work succeeds.
 */
class BackfillDrainWorker(context: Context, params: WorkerParameters) :
    CoroutineWorker(context, params) {
    override suspend fun doWork(): Result {
        val backfill = BackfillAndroid.instance ?: return Result.success()
        return try {
            when (backfill.flush().end) {
                DrainEnd.Empty -> Result.success()
                // The server is busy or the network dropped mid-drain: the events stay buffered
                // and WorkManager tries again with its own backoff.
                is DrainEnd.RetryLater -> Result.retry()
                // A configuration fault: retrying as is cannot help; the data is kept.
                is DrainEnd.Stopped, is DrainEnd.Misconfigured -> Result.failure()
            }
        } catch (e: BackfillException) {
            Result.retry()
        } catch (e: IllegalArgumentException) {
            // The server refused the credentials: retrying as is cannot help; the data is kept.
            Result.failure()
        } catch (e: IllegalStateException) {
            // The client was closed: the app is shutting it down on purpose.
            Result.success()
        }
    }
}
