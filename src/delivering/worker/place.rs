//! Where a worker belongs: each configured database (`billhook.databases`) has `billhook.workers`
//! workers, and each worker has a slot of shared memory, numbered database by database. Pure: no
//! Postgres calls, so plain unit tests cover it.

use crate::gucs::{MAX_DATABASES, MAX_WORKERS_PER_DATABASE};

/// Slots of shared memory: one per worker there can be.
pub const SLOTS: usize = MAX_DATABASES * MAX_WORKERS_PER_DATABASE;

/// A worker's place: its database's index in `billhook.databases` and its number among that
/// database's workers. Member 0 fans events out and runs the database's periodic jobs; every member
/// claims and sends the pushes of the webhooks whose id modulo the number of workers is its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Place {
    pub database: usize,
    pub member: usize,
}

impl Place {
    pub fn of_slot(slot: usize) -> Place {
        Place { database: slot / MAX_WORKERS_PER_DATABASE, member: slot % MAX_WORKERS_PER_DATABASE }
    }

    pub fn slot(self) -> usize {
        self.database * MAX_WORKERS_PER_DATABASE + self.member
    }

    /// Whether `databases` configured databases with `workers` workers each have this place.
    pub fn is_configured(self, databases: usize, workers: usize) -> bool {
        self.database < databases && self.member < workers
    }

    /// Every place `databases` databases with `workers` workers each have, database by database.
    pub fn all(databases: usize, workers: usize) -> impl Iterator<Item = Place> {
        (0..databases.min(MAX_DATABASES)).flat_map(move |database| {
            (0..workers.min(MAX_WORKERS_PER_DATABASE)).map(move |member| Place { database, member })
        })
    }

    /// The places of the database's other workers there can be (configured or not).
    pub fn siblings(self) -> impl Iterator<Item = Place> {
        (0..MAX_WORKERS_PER_DATABASE)
            .filter(move |member| *member != self.member)
            .map(move |member| Place { database: self.database, member })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_places_correspond_one_to_one() {
        for slot in 0..SLOTS {
            assert_eq!(Place::of_slot(slot).slot(), slot);
        }
        assert_eq!(Place::of_slot(0), Place { database: 0, member: 0 });
        assert_eq!(Place::of_slot(MAX_WORKERS_PER_DATABASE + 1), Place { database: 1, member: 1 });
    }

    #[test]
    fn the_configured_places_are_every_member_of_every_database() {
        let places: Vec<Place> = Place::all(2, 3).collect();
        assert_eq!(places.len(), 6);
        assert!(places.iter().all(|p| p.is_configured(2, 3)));
        assert!(!Place { database: 0, member: 3 }.is_configured(2, 3));
        assert!(!Place { database: 2, member: 0 }.is_configured(2, 3));
        assert_eq!(Place::all(100, 100).count(), SLOTS, "no more places than slots");
    }

    #[test]
    fn siblings_are_the_same_databases_other_members() {
        let place = Place { database: 1, member: 2 };
        let siblings: Vec<Place> = place.siblings().collect();
        assert_eq!(siblings.len(), MAX_WORKERS_PER_DATABASE - 1);
        assert!(siblings.iter().all(|s| s.database == 1 && s.member != 2));
    }
}
