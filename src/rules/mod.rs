//! The token rules as pure functions over plain data: no I/O, no clocks, no locks.
//! Everything that decides what a token may do lives here and is tested with properties.

pub mod authorize;
pub mod cidr;
pub mod pattern;
pub mod scope;

#[cfg(test)]
mod attenuation_tests;
