//! `--scenario shards`: a simulation of the sharded design of `docs/scaling.md`, no
//! database. One coupon's stock is split into escrow slots, one per shard; users are
//! hashed to shards, with a skewed load; each shard grants from its own slot only. A
//! rebalancer moves units between slots by transfers: the source shard debits its slot
//! and records the transfer (its id, the units) in one transaction, the target shard
//! credits its slot and records the id as received in one transaction, some time
//! later. A transfer's credit may be delivered twice (a retry after a lost answer) and
//! is applied once; a debit whose credit is lost in a crash is delivered again by id.
//!
//! Checked at every tick: granted + in every slot + in transit = the stock, exactly.
//! Reported: how many requests were refused while another shard still had stock, and
//! how much stock was left in slots and in transit when the sale ended, for a static
//! split and for rebalancers of different periods.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Bench, BenchError};

/// Shards of the simulated installation.
const SHARDS: usize = 8;
/// The hot coupon's stock.
const STOCK: i64 = 20_000;
/// Requests of the flash sale, spread over [`TICKS`]: 1.2 times the stock, so that
/// how much stock the split leaves stranded shows at the end.
const REQUESTS: usize = 24_000;
/// 10 ms ticks: the sale lasts 10 s.
const TICKS: usize = 1_000;
/// Ticks a transfer's credit takes to arrive (a commit on the source, one on the
/// target, and the rebalancer's round trip between them).
const TRANSIT_TICKS: usize = 3;

/// A deterministic generator (splitmix64): the same figures on every machine.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A transfer between two shards' slots.
struct Transfer {
    id: u64,
    to: usize,
    units: i64,
    arrives: usize,
}

/// The shards' books.
#[derive(Default)]
struct Books {
    slots: Vec<i64>,
    granted: i64,
    /// Debited at the source, not yet credited at the target.
    in_transit: Vec<Transfer>,
    /// Transfer ids each shard has credited (the target's idempotence record).
    received: Vec<BTreeSet<u64>>,
    /// Refused while another shard had stock in its slot.
    refused_with_stock_elsewhere: usize,
    transfers: u64,
    moved: i64,
    duplicates_ignored: usize,
    redelivered: usize,
    max_in_transit: i64,
}

impl Books {
    fn in_transit(&self) -> i64 {
        self.in_transit.iter().map(|t| t.units).sum()
    }

    fn check(&self, tick: usize) -> Result<(), String> {
        let held: i64 = self.slots.iter().sum::<i64>() + self.in_transit();
        match (
            self.granted + held == STOCK,
            self.slots.iter().all(|s| *s >= 0),
        ) {
            (true, true) => Ok(()),
            _ => Err(format!(
                "tick {tick}: granted {} + slots {:?} + in transit {} != stock {STOCK}",
                self.granted,
                self.slots,
                self.in_transit()
            )),
        }
    }

    /// One request on `shard`.
    fn grant(&mut self, shard: usize) {
        if self.slots[shard] > 0 {
            self.slots[shard] -= 1;
            self.granted += 1;
        } else if self.slots.iter().any(|s| *s > 0) {
            self.refused_with_stock_elsewhere += 1;
        }
    }

    /// Credits the transfers due at `tick`; a credit delivered twice is applied once.
    fn deliver(&mut self, tick: usize, draws: &mut Draws) {
        let (due, later): (Vec<Transfer>, Vec<Transfer>) =
            self.in_transit.drain(..).partition(|t| t.arrives <= tick);
        self.in_transit = later;
        for t in due {
            // A crash on the target before its commit: the credit is lost and the
            // rebalancer delivers it again by id later.
            if draws.unit() < 0.02 {
                self.redelivered += 1;
                self.in_transit.push(Transfer {
                    arrives: tick + TRANSIT_TICKS,
                    ..t
                });
                continue;
            }
            if self.received[t.to].insert(t.id) {
                self.slots[t.to] += t.units;
            }
            // The answer was lost and the rebalancer sent it again: the id is known.
            if draws.unit() < 0.02 && !self.received[t.to].insert(t.id) {
                self.duplicates_ignored += 1;
            }
        }
    }

    /// The rebalancer: reads the slots, and moves units from shards holding more than
    /// their share of the recent demand to those holding less.
    fn rebalance(&mut self, tick: usize, demand: &[f64]) {
        let total: i64 = self.slots.iter().sum();
        let weight: f64 = demand.iter().sum();
        if total == 0 || weight == 0.0 {
            return;
        }
        let target: Vec<i64> = demand
            .iter()
            .map(|d| (total as f64 * d / weight).floor() as i64)
            .collect();
        let mut surplus: BTreeMap<usize, i64> = BTreeMap::new();
        let mut deficit: BTreeMap<usize, i64> = BTreeMap::new();
        for (shard, (&has, &wants)) in self.slots.iter().zip(&target).enumerate() {
            match has - wants {
                d if d > 0 => surplus.insert(shard, d),
                d if d < 0 => deficit.insert(shard, -d),
                _ => None,
            };
        }
        for (&to, need) in deficit.iter_mut() {
            for (&from, spare) in surplus.iter_mut() {
                let units = (*need).min(*spare).min(self.slots[from]);
                if units <= 0 {
                    continue;
                }
                // The source's transaction: a guarded debit and the transfer's row.
                self.slots[from] -= units;
                self.transfers += 1;
                self.moved += units;
                self.in_transit.push(Transfer {
                    id: self.transfers,
                    to,
                    units,
                    arrives: tick + TRANSIT_TICKS,
                });
                *spare -= units;
                *need -= units;
            }
        }
        self.max_in_transit = self.max_in_transit.max(self.in_transit());
    }
}

/// What one simulated sale left.
struct Sale {
    books: Books,
    /// Stock in slots and in transit when the last request was decided.
    stranded: i64,
}

/// One sale: `period` ticks between rebalances, `None` for a static split.
fn sale(period: Option<usize>) -> Result<Sale, String> {
    let mut draws = Draws(0x5EED);
    // The load: shard i gets weight 1/(i+1) (Zipf), shuffled by the hash of users.
    let weights: Vec<f64> = (0..SHARDS).map(|i| 1.0 / (i + 1) as f64).collect();
    let sum: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / sum;
            Some(*acc)
        })
        .collect();
    let mut books = Books {
        slots: (0..SHARDS)
            .map(|i| STOCK / SHARDS as i64 + i64::from(i < (STOCK % SHARDS as i64) as usize))
            .collect(),
        received: vec![BTreeSet::new(); SHARDS],
        ..Books::default()
    };
    books.check(0)?;
    let mut demand = vec![0.0; SHARDS];
    let per_tick = REQUESTS / TICKS;
    for tick in 0..TICKS {
        books.deliver(tick, &mut draws);
        for _ in 0..per_tick {
            let u = draws.unit();
            let shard = cumulative.iter().position(|c| u < *c).unwrap_or(SHARDS - 1);
            demand[shard] += 1.0;
            books.grant(shard);
        }
        if let Some(period) = period {
            if tick % period == period - 1 {
                books.rebalance(tick, &demand);
                demand.iter_mut().for_each(|d| *d *= 0.5);
            }
        }
        books.check(tick)?;
    }
    let stranded = books.slots.iter().sum::<i64>() + books.in_transit();
    // After the sale the transfers in flight still land: nothing is created or lost.
    books.deliver(usize::MAX, &mut draws);
    while !books.in_transit.is_empty() {
        books.deliver(usize::MAX, &mut draws);
    }
    books.check(TICKS)?;
    Ok(Sale { books, stranded })
}

/// Runs the sale with a static split and with rebalancers of 1 s, 100 ms and 30 ms.
pub async fn run(bench: &mut Bench) -> Result<(), BenchError> {
    println!(
        "\n[shards] simulated flash sale: {SHARDS} shards, stock {STOCK} in escrow slots, \
         {REQUESTS} requests in {TICKS} ticks of 10 ms, Zipf load over the shards, \
         transfers {TRANSIT_TICKS} ticks in transit, 2% of credits lost and 2% sent twice"
    );
    for (name, period) in [
        ("static split", None),
        ("rebalance every 1 s", Some(100)),
        ("rebalance every 100 ms", Some(10)),
        ("rebalance every 30 ms", Some(3)),
    ] {
        let sale = sale(period).map_err(|message| BenchError::Check {
            scenario: "shards".into(),
            message,
        })?;
        let b = &sale.books;
        println!("  -- {name}");
        let scenario = format!("shards/{name}");
        let f = &mut bench.figures;
        f.note(&scenario, "granted", b.granted as f64, "coupons");
        f.note(
            &scenario,
            "refused while another shard had stock",
            b.refused_with_stock_elsewhere as f64,
            "requests",
        );
        f.note(
            &scenario,
            "stranded when the sale ended",
            sale.stranded as f64,
            "units",
        );
        f.note(&scenario, "transfers", b.transfers as f64, "transfers");
        f.note(&scenario, "units moved", b.moved as f64, "units");
        f.note(
            &scenario,
            "most in transit at once",
            b.max_in_transit as f64,
            "units",
        );
        f.note(
            &scenario,
            "credits delivered again",
            b.redelivered as f64,
            "credits",
        );
        f.note(
            &scenario,
            "credits sent twice, applied once",
            b.duplicates_ignored as f64,
            "credits",
        );
        f.note(
            &scenario,
            "stock created or lost (checked every tick)",
            0.0,
            "units",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_unit_is_created_or_lost_and_rebalancing_strands_less() {
        let fixed = sale(None).unwrap();
        let balanced = sale(Some(10)).unwrap();
        for s in [&fixed, &balanced] {
            assert_eq!(s.books.granted + s.books.slots.iter().sum::<i64>(), STOCK);
        }
        assert!(
            fixed.stranded > 0,
            "a static split strands the cold shards' stock"
        );
        assert!(
            balanced.books.refused_with_stock_elsewhere < fixed.books.refused_with_stock_elsewhere,
            "{} against {}",
            balanced.books.refused_with_stock_elsewhere,
            fixed.books.refused_with_stock_elsewhere
        );
        assert!(balanced.books.transfers > 0);
    }
}
