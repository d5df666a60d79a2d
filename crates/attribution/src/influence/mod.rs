//! Influence attribution for adapters trained here: a gradient index of the per-example
//! projected LoRA gradients of an adapter's training records, and estimators that score every
//! record for a probe (prompt, completion).
