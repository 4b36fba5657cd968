//! The delivery worker: fan committed events out into deliveries → claim due deliveries → send
//! them from sender threads → record outcomes, in one loop on the worker's main thread (the only
//! thread that touches Postgres).
//!
//! - Claims take a lease (`locked_until`, `locked_by`) with `FOR UPDATE SKIP LOCKED`, so a killed
//!   worker's deliveries are claimed again; at start the worker frees leases of dead processes.
//! - Each webhook has at most `billhook.max_in_flight_per_webhook` requests in flight; the rest of
//!   its claimed deliveries wait in a per-webhook queue, so a dead endpoint never holds the senders.
//! - Outcomes are written in batches, in the same transaction as the fan-out and the next claim,
//!   unless the round has spent its budget (round::ROUND_BUDGET) before those: then the next round,
//!   at once, does them, so that no round adds up the outcomes, fan-out and claims of many webhooks;
//!   each part takes only the rows that fit its own budget at its recent cost (round::PartCost).
//! - Commits that record events some webhook subscribes to set the worker's latch (see `wake`);
//!   polling is the fallback. With `billhook.workers` > 1 each member sends for its share of the
//!   webhooks (`place`, `statements::Share`).
//!
//! The rooms: `mod.rs` the entry point; `startup` (session settings, waiting for the database,
//! launching the other workers); `main_loop` (the loop, and each round's plan and apply);
//! `round_transaction` (what a round does in its transaction); `statements` (every SQL statement
//! that moves a delivery, and the drawing of its states); `quarantine` and `isolation` (a part of
//! a round that fails is split until what fails alone is set apart); `claim` (how much to claim
//! from whom); `round` (when the loop goes to the database, and each part's budget);
//! `transactions` and `latch` (the worker's transactions, its waits and signals); `shmem` and
//! `place` (what ordinary backends call, and which worker serves what).

mod claim;
mod isolation;
mod latch;
mod main_loop;
mod place;
mod quarantine;
mod round;
mod round_transaction;
mod shmem;
mod startup;
mod statements;
mod transactions;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

use crate::gucs;
use latch::{wait, Woken};
use main_loop::Worker;
use startup::{pin_session_settings, wait_for_database, Launcher};

pub use place::Place;
pub use shmem::{
    is_preloaded, register_in_postmaster, status_of, subscribed_events, wake, webhooks_changed, Wake, WorkerStatus,
};

pub fn current_database_name() -> String {
    unsafe { std::ffi::CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId)) }.to_string_lossy().into_owned()
}

/// The first worker of the session's database, if `billhook.databases` names it.
pub fn this_databases_worker() -> Option<WorkerStatus> {
    let name = current_database_name();
    gucs::databases().iter().position(|d| *d == name).map(|database| status_of(Place { database, member: 0 }))
}

/// The database the worker at `place` serves, if the settings still have that place.
fn database_of(place: Place) -> Option<String> {
    let databases = gucs::databases();
    place.is_configured(databases.len(), gucs::workers()).then(|| databases[place.database].clone())
}

/// Each configured database has `billhook.workers` workers: the one started with argument `slot`
/// has the place `Place::of_slot(slot)`. The postmaster starts the first; the first starts the
/// others (`shmem::launch`). Each serves its database alone: another database's endpoints,
/// extension or restarts never touch it; within a database each sends its share of the webhooks.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn billhook_worker_main(arg: pg_sys::Datum) {
    latch::install_signal_handlers();
    let slot = arg.value();
    let place = Place::of_slot(slot);
    let Some(database) = database_of(place) else { end_for_good(slot) };
    if !shmem::take_slot(slot) {
        // A second worker for the slot (registered twice around a crash): the first one stays.
        unsafe { pg_sys::proc_exit(if slot == 0 { 1 } else { 0 }) };
    }
    let mut launcher = (slot == 0).then(Launcher::default);
    // A bgworker connects once and a missing database is FATAL, so the worker first waits for the
    // database while connected to no database, then restarts to connect to it.
    if !shmem::take_database_found(slot) {
        BackgroundWorker::connect_worker_to_spi(None, None);
        wait_for_database(place, &database, launcher.as_mut());
        shmem::set_database_found(slot, true);
        unsafe { pg_sys::proc_exit(1) };
    }
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    shmem::set_database_found(slot, true);
    pin_session_settings();
    shmem::announce_started(slot);
    log!("billhook delivery worker {} started for database \"{database}\"", place.member);
    let leaving = Worker::new(place, database, launcher).run();
    shmem::announce_stopped(slot);
    if leaving {
        end_for_good(slot);
    }
    // Exit code 1 has the postmaster start the worker again (unless it is shutting down), so
    // pg_terminate_backend restarts the worker rather than ending deliveries for good.
    unsafe { pg_sys::proc_exit(1) };
}

/// The slot's place is no longer configured (its database or its member number): exit code 0
/// unregisters the worker. The first worker stays registered (the postmaster's), waiting for a
/// database to be configured again.
fn end_for_good(slot: usize) -> ! {
    if slot == 0 {
        while wait(None, gucs::poll_interval()) != Woken::ShutDown && !latch::reload_settings_if_asked() {}
        unsafe { pg_sys::proc_exit(1) };
    }
    shmem::release_slot(slot);
    let place = Place::of_slot(slot);
    log!(
        "billhook delivery worker {} of database {} in billhook.databases ends: the settings have no place for it",
        place.member,
        place.database + 1
    );
    unsafe { pg_sys::proc_exit(0) }
}
