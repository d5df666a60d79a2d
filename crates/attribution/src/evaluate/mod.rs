//! The evaluation harness: labelled corpora split among honest and bad contributors, and the
//! measures that say how well attribution works (ROC-AUC, payout inflation under copies, the
//! linear datamodeling score, verbatim credit), next to baselines (KNN-Shapley, random).

pub mod replication;
pub mod verbatim;
