//! Committing: the triggers record each row change of an event table in a backend-local log
//! (`emit`), the log keeps the transaction's net effect (`changes`), and the pre-commit hook writes
//! its events to `billhook.events` (`outbox`), in the committing transaction, with the entity as
//! of commit.

pub mod changes;
pub mod emit;
pub mod entities;
pub mod outbox;
