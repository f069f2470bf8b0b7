//! No import can make the host wait.
//!
//! WASI 0.2 has two ways to block: `wasi:io/poll.poll` and
//! `pollable.block`, which wait for pollables, and the monotonic clock's
//! `subscribe-*`, which make pollables that become ready only after real
//! time passes (or never, for a far instant). Standard libraries reach
//! them through `sleep`. A blocked host call is out of reach of the epoch
//! deadline, which interrupts only running Wasm, so one `sleep` in a
//! policy would stop the scheduler.
//!
//! A policy has no business waiting: it decides about an instant. So the
//! WASI linker's versions are shadowed here:
//! - the clock's subscriptions give pollables that are ready at once (a
//!   policy sees the host's virtual clock, which does not move during a
//!   call; any sleep is over as soon as it starts);
//! - `poll` and `block` look at their pollables without waiting: whatever
//!   is ready is reported, and waiting on nothing ready traps (a strike)
//!   instead of blocking.
//!
//! The other blocking calls (`blocking-read`, `blocking-write-and-flush`,
//! ...) cannot wait in this sandbox: stdin is closed, stdout and stderr are
//! log sinks that are always ready, and no file or socket can be opened.

use super::sandbox::PluginState;
use std::future::Future;
use std::task::{Context, Poll, Waker};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

/// The WASI 0.2 interfaces this host links (`wasmtime-wasi`'s version;
/// imports of any earlier 0.2 version resolve to them).
const POLL: &str = "wasi:io/poll@0.2.12";
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// How many times a pollable is looked at before it counts as not ready:
/// some that are ready yield once before saying so.
const LOOKS: usize = 4;

/// A pollable that is ready from the start: a sleep on the virtual clock.
struct Elapsed;

#[wasmtime_wasi::async_trait]
impl Pollable for Elapsed {
    async fn ready(&mut self) {}
}

/// Replace the WASI functions that could wait with ones that cannot.
/// Call after linking WASI.
pub(crate) fn link(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    {
        let mut clock = linker.instance(MONOTONIC_CLOCK)?;
        clock.func_wrap(
            "subscribe-instant",
            |mut store: StoreContextMut<'_, PluginState>, (_when,): (u64,)| Ok((elapsed(store.data_mut())?,)),
        )?;
        clock.func_wrap(
            "subscribe-duration",
            |mut store: StoreContextMut<'_, PluginState>, (_for,): (u64,)| Ok((elapsed(store.data_mut())?,)),
        )?;
    }
    {
        let mut poll = linker.instance(POLL)?;
        poll.func_wrap(
            "poll",
            |mut store: StoreContextMut<'_, PluginState>, (pollables,): (Vec<Resource<DynPollable>>,)| {
                let count = pollables.len();
                let table = store.data_mut().table();
                match without_waiting(table.poll(pollables)) {
                    Some(ready) => Ok((ready?,)),
                    None => Err(would_wait(&format!("poll on {count} pollable(s)"))),
                }
            },
        )?;
        poll.func_wrap(
            "[method]pollable.block",
            |mut store: StoreContextMut<'_, PluginState>, (pollable,): (Resource<DynPollable>,)| {
                let table = store.data_mut().table();
                match without_waiting(table.block(pollable)) {
                    Some(done) => done,
                    None => Err(would_wait("pollable.block")),
                }
            },
        )?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

fn elapsed(state: &mut PluginState) -> wasmtime::Result<Resource<DynPollable>> {
    let table = state.table();
    let ready = table.push(Elapsed)?;
    subscribe(table, ready)
}

fn would_wait(what: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "{what} would wait for something not ready: a policy may not block the host"
    ))
}

/// The future's output if it is ready within a few looks; `None` if it
/// would wait. Looked at inside WASI's Tokio context, since some pollables
/// are Tokio objects.
fn without_waiting<F: Future>(future: F) -> Option<F::Output> {
    wasmtime_wasi::runtime::with_ambient_tokio_runtime(|| {
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..LOOKS {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return Some(out);
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Limits;

    #[test]
    fn pollables_are_ready_at_once_and_their_number_is_bounded() {
        let mut state = PluginState::new("p".into(), &Limits::default());
        let first = elapsed(&mut state).expect("a pollable");
        let ready = without_waiting(state.table().block(first));
        assert!(matches!(ready, Some(Ok(()))), "a sleep is over at once");
        // A plugin that makes pollables without dropping them runs into the
        // table's cap, not into the host's memory.
        let made = (0..100_000).take_while(|_| elapsed(&mut state).is_ok()).count();
        assert!(made < super::super::sandbox::MAX_WASI_RESOURCES, "{made}");
    }
}
