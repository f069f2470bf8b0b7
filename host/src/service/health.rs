//! The standard health service, `grpc.health.v1.Health`, as its protocol
//! describes it.
//!
//! Why not tonic-health's server: its `Watch` answers `NOT_FOUND` for a
//! service it does not know and ends the call, where the protocol says to
//! send `SERVICE_UNKNOWN` and keep the stream open (clients that follow it,
//! such as gRPC's client-side health checking, then retry in a loop), and
//! it has no way to end its open streams, which keeps a graceful shutdown
//! waiting forever. Only its message types are used here.
//!
//! The state is one value in a `tokio::sync::watch` channel: every Watch
//! stream holds a receiver and sends a message when its service's status
//! differs from the last one it sent, so a change reaches every watcher
//! without a task or a queue per watcher, and a client that goes away
//! frees its stream at once.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Longest part of an unknown service's name repeated in an error.
const MAX_NAME_ECHO: usize = 128;

/// What every Watch stream sees.
#[derive(Debug, Clone)]
struct State {
    /// The services with a status; the empty name, the whole server, is
    /// always one of them.
    known: Arc<BTreeSet<String>>,
    serving: bool,
    /// Set by [`Health::shut_down`]: every stream ends.
    ended: bool,
}

impl State {
    fn status_of(&self, service: &str) -> ServingStatus {
        if !self.known.contains(service) {
            ServingStatus::ServiceUnknown
        } else if self.serving && !self.ended {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }
}

/// The health of the server's services: the handle the server changes it
/// with, and the source of the gRPC service ([`Health::service`]). Cheap
/// to clone; every clone shares the state.
#[derive(Debug, Clone)]
pub struct Health {
    state: Arc<watch::Sender<State>>,
}

impl Health {
    /// Health for the whole server (the empty name) and for `services`
    /// (full names such as `wsched.v1.Jobs`), all `NOT_SERVING` until
    /// [`Health::set_serving`].
    pub fn new<S: Into<String>>(services: impl IntoIterator<Item = S>) -> Self {
        let mut known: BTreeSet<String> = services.into_iter().map(Into::into).collect();
        known.insert(String::new());
        let (state, _) = watch::channel(State {
            known: Arc::new(known),
            serving: false,
            ended: false,
        });
        Health { state: Arc::new(state) }
    }

    /// Set every service `SERVING` (true) or `NOT_SERVING` (false); Watch
    /// streams see the change. No effect after [`Health::shut_down`].
    pub fn set_serving(&self, serving: bool) {
        self.state.send_if_modified(|state| {
            let changed = !state.ended && state.serving != serving;
            if changed {
                state.serving = serving;
            }
            changed
        });
    }

    /// Whether the services are `SERVING`.
    pub fn is_serving(&self) -> bool {
        let state = self.state.borrow();
        state.serving && !state.ended
    }

    /// Give `service` a status (the one every service has); its watchers,
    /// who were told `SERVICE_UNKNOWN`, get it.
    pub fn add_service(&self, service: impl Into<String>) {
        let service = service.into();
        self.state.send_if_modified(|state| {
            if state.known.contains(&service) {
                return false;
            }
            Arc::make_mut(&mut state.known).insert(service);
            true
        });
    }

    /// For a shutdown: every service `NOT_SERVING` for good, and every
    /// Watch stream, open now or later, sends that (unless it was its last
    /// message) and ends, so that a graceful shutdown does not wait on
    /// them.
    pub fn shut_down(&self) {
        self.state.send_if_modified(|state| {
            let changed = !state.ended;
            state.ended = true;
            state.serving = false;
            changed
        });
    }

    /// The gRPC service.
    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService { health: self.clone() })
    }
}

/// The `grpc.health.v1.Health` service over a [`Health`].
#[derive(Debug)]
pub struct HealthService {
    health: Health,
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status as i32 }
}

#[tonic::async_trait]
impl HealthApi for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.health.state.borrow().status_of(&service) {
            ServingStatus::ServiceUnknown => {
                let mut echo = service.as_str();
                if echo.len() > MAX_NAME_ECHO {
                    let mut end = MAX_NAME_ECHO;
                    while !echo.is_char_boundary(end) {
                        end -= 1;
                    }
                    echo = &echo[..end];
                }
                Err(Status::not_found(format!("service: unknown service {echo:?}")))
            }
            status => Ok(Response::new(response(status))),
        }
    }

    type WatchStream = WatchStatus;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<WatchStatus>, Status> {
        Ok(Response::new(WatchStatus {
            service: request.into_inner().service,
            changes: WatchStream::new(self.health.state.subscribe()),
            last: None,
            done: false,
        }))
    }
}

/// One Watch call's stream: the service's status now, then every change,
/// until the server shuts down.
pub struct WatchStatus {
    service: String,
    changes: WatchStream<State>,
    last: Option<ServingStatus>,
    done: bool,
}

impl Stream for WatchStatus {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while !this.done {
            let Some(state) = std::task::ready!(Pin::new(&mut this.changes).poll_next(cx)) else {
                // Every handle is gone: so is the server.
                this.done = true;
                break;
            };
            let status = if state.ended {
                this.done = true;
                ServingStatus::NotServing
            } else {
                state.status_of(&this.service)
            };
            if this.last != Some(status) {
                this.last = Some(status);
                return Poll::Ready(Some(Ok(response(status))));
            }
        }
        Poll::Ready(None)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::StreamExt;

    use super::*;

    fn health() -> Health {
        let health = Health::new(["wsched.v1.Jobs"]);
        health.set_serving(true);
        health
    }

    async fn check(health: &Health, service: &str) -> Result<ServingStatus, Status> {
        let answer = HealthService { health: health.clone() }
            .check(Request::new(HealthCheckRequest {
                service: service.into(),
            }))
            .await?;
        Ok(ServingStatus::try_from(answer.into_inner().status).expect("a known status"))
    }

    async fn watch(health: &Health, service: &str) -> WatchStatus {
        HealthService { health: health.clone() }
            .watch(Request::new(HealthCheckRequest {
                service: service.into(),
            }))
            .await
            .expect("watch")
            .into_inner()
    }

    async fn next(stream: &mut WatchStatus) -> Option<ServingStatus> {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a message or the end in time")
            .map(|r| ServingStatus::try_from(r.expect("ok").status).expect("a known status"))
    }

    /// Whether `stream` stays silent (and open) for a moment.
    async fn silent(stream: &mut WatchStatus) -> bool {
        tokio::time::timeout(Duration::from_millis(100), stream.next())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn check_answers_known_services_and_not_found_for_others() {
        let health = health();
        assert_eq!(check(&health, "").await.expect("server"), ServingStatus::Serving);
        assert_eq!(
            check(&health, "wsched.v1.Jobs").await.expect("jobs"),
            ServingStatus::Serving
        );
        let unknown = check(&health, "nope").await.expect_err("unknown");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        let long = check(&health, &"z".repeat(1 << 20)).await.expect_err("unknown");
        assert!(long.message().len() < 200, "{}", long.message().len());
        health.set_serving(false);
        assert_eq!(check(&health, "").await.expect("server"), ServingStatus::NotServing);
    }

    #[tokio::test]
    async fn watch_on_an_unknown_service_waits_for_it_to_become_known() {
        let health = health();
        let mut stream = watch(&health, "wsched.v1.Later").await;
        assert_eq!(next(&mut stream).await, Some(ServingStatus::ServiceUnknown));
        assert!(silent(&mut stream).await);
        // A change to other services is no change for this one.
        health.set_serving(false);
        health.set_serving(true);
        assert!(silent(&mut stream).await);
        health.add_service("wsched.v1.Later");
        assert_eq!(next(&mut stream).await, Some(ServingStatus::Serving));
    }

    #[tokio::test]
    async fn watch_sends_the_status_then_every_change_and_ends_at_shutdown() {
        let health = health();
        let mut jobs = watch(&health, "wsched.v1.Jobs").await;
        let mut unknown = watch(&health, "other").await;
        assert_eq!(next(&mut jobs).await, Some(ServingStatus::Serving));
        assert_eq!(next(&mut unknown).await, Some(ServingStatus::ServiceUnknown));
        health.set_serving(false);
        assert_eq!(next(&mut jobs).await, Some(ServingStatus::NotServing));
        health.set_serving(true);
        assert_eq!(next(&mut jobs).await, Some(ServingStatus::Serving));

        health.shut_down();
        assert_eq!(next(&mut jobs).await, Some(ServingStatus::NotServing));
        assert_eq!(next(&mut jobs).await, None);
        assert_eq!(next(&mut unknown).await, Some(ServingStatus::NotServing));
        assert_eq!(next(&mut unknown).await, None);
        // For good: a later watch ends at once, and serving again is refused.
        health.set_serving(true);
        assert!(!health.is_serving());
        let mut late = watch(&health, "").await;
        assert_eq!(next(&mut late).await, Some(ServingStatus::NotServing));
        assert_eq!(next(&mut late).await, None);
    }

    #[tokio::test]
    async fn watch_ends_when_every_handle_is_gone() {
        let health = health();
        let mut stream = watch(&health, "").await;
        assert_eq!(next(&mut stream).await, Some(ServingStatus::Serving));
        drop(health);
        assert_eq!(next(&mut stream).await, None);
    }
}
