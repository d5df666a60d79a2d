//! The engine in the gateway's own process (embedded mode): one `openledger_ml::Engine`.

use std::sync::Arc;

use async_trait::async_trait;
use openledger_ml::{Engine, GenerateRequest, MlError};

use super::{BaseModel, EngineHost, EngineStatus, EngineStream};

/// An in-process engine.
pub struct LocalEngine {
    engine: Arc<Engine>,
    base: BaseModel,
}

impl LocalEngine {
    pub fn new(engine: Arc<Engine>, base: BaseModel) -> Self {
        Self { engine, base }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

#[async_trait]
impl EngineHost for LocalEngine {
    fn base(&self) -> &BaseModel {
        &self.base
    }

    async fn generate(&self, _inference_id: &str, request: GenerateRequest) -> Result<EngineStream, MlError> {
        let mut generation = self.engine.submit(request)?;
        let (_, empty) = tokio::sync::mpsc::unbounded_channel();
        let events = std::mem::replace(&mut generation.events, empty);
        Ok(EngineStream::new(events, generation))
    }

    fn describe(&self) -> Vec<EngineStatus> {
        let stats = self.engine.stats();
        vec![EngineStatus { name: "in-process".into(), healthy: true, running: stats.running, waiting: stats.waiting }]
    }
}
