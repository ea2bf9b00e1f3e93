//! SIGINT and SIGTERM: the first asks the pipeline to stop reading and drain; a second
//! exits at once. SIGHUP reloads the rules.

use crate::metrics::Metrics;
use crate::pipeline::Stop;

/// Watches for the signals on a thread of its own for the rest of the process, returning
/// once they are caught: a SIGHUP sent after that reloads rather than kills. `reload` runs
/// on that thread, so two reloads never overlap.
pub(crate) fn watch(stop: Stop, metrics: Metrics, reload: impl FnMut() + Send + 'static) {
    let (caught, watching) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for signals");
                return;
            }
        };
        runtime.block_on(wait(stop, metrics, reload, caught));
    });
    match spawned {
        // Nothing comes if the thread could not catch them; it has logged why.
        Ok(_) => drop(watching.recv()),
        Err(e) => tracing::warn!(error = %e, "cannot watch for signals"),
    }
}

async fn wait(
    stop: Stop,
    metrics: Metrics,
    mut reload: impl FnMut(),
    caught: std::sync::mpsc::Sender<()>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot watch for signals");
        return;
    };
    let _ = caught.send(());
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {
                reload();
                continue;
            }
        }
        if stop.requested() {
            tracing::warn!("second signal, exiting now");
            std::process::exit(130);
        }
        // Stop first: logging can fail (a closed stderr) and must not keep the stop back.
        stop.request();
        metrics.running(false);
        tracing::info!("draining");
    }
}
