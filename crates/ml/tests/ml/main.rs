//! Integration tests of the engine crate on tiny seeded models written by the tests, plus the
//! SmolLM2 reference comparison against llama.cpp (needs `scripts/fetch-models.sh smollm2`).

// A failed unwrap in a test is the test failing, with the value in the panic message.
#![allow(clippy::unwrap_used)]

mod engine;
mod model;
mod reference;
mod train;
