//! SIGINT and SIGTERM: the first asks the pipeline to stop reading and drain; a second
//! exits at once.

use crate::metrics::Metrics;
use crate::pipeline::Stop;

/// Watches for the signals on a thread of its own for the rest of the process.
pub(crate) fn watch(stop: Stop, metrics: Metrics) {
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for signals");
                return;
            }
        };
        runtime.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            else {
                tracing::warn!("cannot watch for signals");
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            // Stop first: logging can fail (a closed stderr) and must not keep the stop back.
            stop.request();
            metrics.running(false);
            tracing::info!("draining");
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::warn!("second signal, exiting now");
            std::process::exit(130);
        });
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch for signals");
    }
}
