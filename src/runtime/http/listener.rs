//! The listener's bounds, so that no client can take the file descriptors the database
//! pool and the partner connections need: at most `http.max_connections` connections
//! are open at once (one more for the moment a connection is being shed), and a
//! connection that has not sent a whole request head within `http.header_timeout` is
//! closed, whether it is new or idle on keep-alive (hyper's timer runs whenever it
//! waits for a head, not only for the first one).
//!
//! At the cap, a new connection sheds the oldest connection that has no request in a
//! handler. A flood of idle connections therefore passes through at the speed of
//! `accept` and a health check behind it is answered at once. Merely not accepting at
//! the cap would leave the check queued in the kernel's backlog behind the flood, for
//! up to backlog ÷ cap × `header_timeout` (1,024 ÷ 64 × 5 s, over a minute). Only when
//! every connection at the cap is in a handler does the loop stop accepting; the rest
//! then wait in the backlog, holding no file descriptor of the daemon's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service as _};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long the loop pauses after `accept` failed for want of a resource (EMFILE,
/// ENFILE, ENOBUFS): the connection stays in the backlog and is taken on the next try,
/// without spinning on an error that a file descriptor freed elsewhere will clear.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How often a connection waiting for a place looks again for one to shed.
const SHED_AGAIN: Duration = Duration::from_millis(50);

/// At most one warning per this long for repeated accept errors and shedding; the
/// rest are counted in the next warning.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// `http.max_connections` and `http.header_timeout` (or the `api.` ones).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The listener's config section, `http` or `api`, for its messages.
    pub section: &'static str,
    /// Connections open at once.
    pub max_connections: usize,
    /// The longest wait for a whole request head.
    pub header_timeout: Duration,
}

/// One open connection, as the accept loop sees it.
#[derive(Default)]
struct Connection {
    /// A request is in a handler: shedding it would drop an answer half made.
    in_handler: AtomicBool,
    /// Cancelled to close the connection and give its place to a newer one.
    shed: CancellationToken,
}

/// Serves `app` on `listener` within `bounds`; never returns.
pub async fn accept_loop(listener: TcpListener, app: Router, bounds: Bounds) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout);
    let mut places = Places::new(bounds.max_connections);
    let mut errors = Throttle::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                if let Some(more) = errors.due() {
                    let section = bounds.section;
                    warn!(error = %e, more, "the {section}.listen listener cannot accept; pausing");
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let (permit, connection) = places.admit(bounds.section).await;
        spawn_connection(&http, stream, app.clone(), permit, connection);
    }
}

fn spawn_connection(
    http: &http1::Builder,
    stream: TcpStream,
    app: Router,
    permit: OwnedSemaphorePermit,
    connection: Arc<Connection>,
) {
    let router = TowerToHyperService::new(app);
    let seen = connection.clone();
    let service = service_fn(move |request| {
        seen.in_handler.store(true, Ordering::Relaxed);
        let answer = router.call(request);
        let seen = seen.clone();
        async move {
            let response = answer.await;
            seen.in_handler.store(false, Ordering::Relaxed);
            response
        }
    });
    let serving = http.serve_connection(TokioIo::new(stream), service);
    tokio::spawn(async move {
        tokio::select! {
            served = serving => {
                if let Err(e) = served {
                    debug!(error = %e, "listener connection closed");
                }
            }
            () = connection.shed.cancelled() => debug!("listener connection shed at the cap"),
        }
        drop(permit);
    });
}

/// The places under the cap, and the open connections oldest first.
struct Places {
    permits: Arc<Semaphore>,
    open: VecDeque<Weak<Connection>>,
    shedding: Throttle,
}

impl Places {
    fn new(max_connections: usize) -> Places {
        Places {
            permits: Arc::new(Semaphore::new(max_connections)),
            open: VecDeque::with_capacity(max_connections),
            shedding: Throttle::default(),
        }
    }

    /// A place for a new connection: a free one, else the place of the oldest
    /// connection not in a handler (shed), else the first place given up. While every
    /// connection is in a handler, it looks again every [`SHED_AGAIN`] for one that
    /// has left its handler, rather than wait for that one's keep-alive to end.
    async fn admit(&mut self, section: &str) -> (OwnedSemaphorePermit, Arc<Connection>) {
        // A connection's task holds the only strong reference; a dead one has closed.
        self.open.retain(|c| c.strong_count() > 0);
        let permit = loop {
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                break permit;
            }
            if self.shed_oldest_idle() {
                if let Some(more) = self.shedding.due() {
                    warn!(more, "the {section}.listen listener is at {section}.max_connections; shedding idle connections");
                }
            }
            let given_up = self.permits.clone().acquire_owned();
            if let Ok(permit) = tokio::time::timeout(SHED_AGAIN, given_up).await {
                break permit.expect("never closed");
            }
        };
        let connection = Arc::new(Connection::default());
        self.open.push_back(Arc::downgrade(&connection));
        (permit, connection)
    }

    fn shed_oldest_idle(&self) -> bool {
        let idle = self
            .open
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| !c.in_handler.load(Ordering::Relaxed) && !c.shed.is_cancelled());
        idle.map(|c| c.shed.cancel()).is_some()
    }
}

/// Errors of one connection that went away before it was accepted: nothing to wait for.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Says when a repeated warning is due, and how many were left out since the last.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    left_out: u64,
}

impl Throttle {
    fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            self.left_out += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.left_out))
    }
}
