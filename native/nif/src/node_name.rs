//! `node_names_check/1`: the node-name rule of `libcluster_core::node_name`, for Elixir
//! (`LibclusterRs.NodeName`), so both sides use one validator; and the VM-wide budget of atoms
//! made from untrusted names, `untrusted_atom_reserve/1` and `untrusted_atom_budget/0` (used by
//! `LibclusterRs.NodeName.untrusted_to_node/3` only).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustler::{Atom, NifResult, Term, TermType};

use crate::atoms;

use libcluster_core::node_name;

/// The names of one call, at most: a regular NIF must return within about a millisecond, and
/// `LibclusterRs.NodeName` sends chunks of 1,000 (about 0.1 ms each; `bench/node_names.exs`).
const MAX_BATCH: usize = 2_000;

/// Whether one term is a valid node name: a binary or an atom (not `nil`, `true`, `false`) whose
/// text follows the rule.
fn valid(term: Term<'_>) -> bool {
    match term.get_type() {
        TermType::Binary => term
            .decode_as_binary()
            .ok()
            .and_then(|b| std::str::from_utf8(b.as_slice()).ok())
            .is_some_and(node_name::is_valid),
        TermType::Atom => term.atom_to_string().is_ok_and(|s| {
            !matches!(s.as_str(), "nil" | "true" | "false") && node_name::is_valid(&s)
        }),
        _ => false,
    }
}

/// `node_names_check(names)` → `{valid, rejected}`: the terms of `names` split by the rule, each
/// list in the input's order. Raises ArgumentError unless `names` is a proper list of at most
/// 2,000 terms.
#[rustler::nif]
fn node_names_check<'a>(names: Term<'a>) -> NifResult<(Vec<Term<'a>>, Vec<Term<'a>>)> {
    let iter: rustler::ListIterator<'a> = names
        .decode()
        .map_err(|_| crate::args::bad("node_names_check/1 expects a list"))?;
    let len = names
        .list_length()
        .map_err(|_| crate::args::bad("node_names_check/1 expects a proper list"))?;
    if len > MAX_BATCH {
        return Err(crate::args::bad(format!(
            "node_names_check/1 takes at most {MAX_BATCH} names per call, got {len}"
        )));
    }
    let (mut ok, mut bad) = (Vec::with_capacity(len), Vec::new());
    for term in iter {
        if valid(term) {
            ok.push(term);
        } else {
            bad.push(term);
        }
    }
    Ok((ok, bad))
}

/// Atoms made from node names heard from untrusted sources (unauthenticated gossip, Postgres
/// NOTIFY) in this VM, and names dropped at the cap.
/// Statics: one count per VM (the NIF library is loaded once), across every topology and restart.
static ATOMS_CREATED: AtomicU64 = AtomicU64::new(0);
static ATOMS_DROPPED: AtomicU64 = AtomicU64::new(0);
static CAP_REPORTED: AtomicBool = AtomicBool::new(false);

/// Reserves one atom of the VM-wide budget `cap`: `:ok` (count it, then make the atom), `:full`,
/// or `:full_first` the first time in this VM that a name is dropped (the caller logs that once).
#[rustler::nif]
fn untrusted_atom_reserve(cap: u64) -> Atom {
    let reserved = ATOMS_CREATED.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
        (n < cap).then_some(n + 1)
    });
    if reserved.is_ok() {
        return atoms::ok();
    }
    ATOMS_DROPPED.fetch_add(1, Ordering::Relaxed);
    if CAP_REPORTED.swap(true, Ordering::SeqCst) {
        atoms::full()
    } else {
        atoms::full_first()
    }
}

/// `{created, dropped}` of the VM-wide budget.
#[rustler::nif]
fn untrusted_atom_budget() -> (u64, u64) {
    (
        ATOMS_CREATED.load(Ordering::SeqCst),
        ATOMS_DROPPED.load(Ordering::Relaxed),
    )
}
