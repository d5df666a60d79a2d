//! What `model` names: the base model, or an adapter of the registry (model-factory) with its
//! owner, prices, files and who may call it.

use openledger_runtime::clients::ServiceChannel;

/// Looks models up in the registry.
#[derive(Clone)]
pub struct Catalog {
    #[allow(dead_code)]
    model_factory: ServiceChannel,
}

impl Catalog {
    pub fn new(model_factory: ServiceChannel) -> Self {
        Self { model_factory }
    }
}
