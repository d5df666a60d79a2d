//! Contributor quality: the influence of each training record on the loss over a trusted
//! validation set, aggregated per contribution and contributor; harmful ones are listed as
//! slashing candidates with their evidence.
