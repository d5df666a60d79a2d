//! The OpenLedger Kubernetes operator: the custom resources of `openledger.io/v1alpha1`
//! ([`crd`]) and their level-triggered controllers ([`controllers`]). `openledger operator run`
//! hosts the controllers; `openledger operator crdgen` writes the CRDs into the Helm chart.

pub mod conditions;
pub mod controllers;
pub mod crd;
pub mod crdgen;
pub mod executor;
pub mod run;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
