//! Replication-robust credit: records that are exact or near copies of each other share one
//! credit, which goes to the first accepted copy, so copying records under more identities
//! never raises the copier's total payout. (Grouping rule: see [`CreditGroups`].)
