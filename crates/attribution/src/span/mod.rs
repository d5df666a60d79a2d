//! Span attribution: a suffix array over the tokenized records of a version (with record
//! boundaries), stored as checksummed shard files; a query finds the maximal spans of a text
//! that occur verbatim and keeps the long and rare ones.
