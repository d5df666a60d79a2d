//! How a service reaches another service's gRPC API: an explicit URL from configuration, else
//! the endpoint that service bound in this process (`openledger dev`), else `listen_host` at
//! that service's configured gRPC port. Channels connect lazily and are reused.

use std::{sync::Arc, time::Duration};

use parking_lot::Mutex;

use openledger_core::{Config, ErrorCode, ServiceKind};
use tonic::{Status, transport::Channel};

use crate::{Endpoints, grpc::status};

/// A lazily connected channel to one service.
#[derive(Clone)]
pub struct ServiceChannel {
    service: ServiceKind,
    explicit_url: Option<String>,
    fallback_url: Option<String>,
    endpoints: Endpoints,
    request_timeout: Duration,
    cached: Arc<Mutex<Option<Channel>>>,
}

impl ServiceChannel {
    pub fn new(service: ServiceKind, explicit_url: Option<String>, config: &Config, endpoints: Endpoints) -> Self {
        let port = config.grpc_port(service);
        let host = if config.listen_host == "0.0.0.0" { "127.0.0.1" } else { config.listen_host.as_str() };
        Self {
            service,
            explicit_url,
            fallback_url: (port != 0).then(|| format!("http://{host}:{port}")),
            endpoints,
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            cached: Arc::new(Mutex::new(None)),
        }
    }

    /// Where the service is reached, or `UNAVAILABLE` while its address is not known yet.
    pub fn url(&self) -> Result<String, Status> {
        let in_process = self
            .endpoints
            .all()
            .into_iter()
            .find(|endpoint| endpoint.service == self.service && endpoint.role == "grpc")
            .map(|endpoint| format!("http://{}", endpoint.addr));
        self.explicit_url.clone().or(in_process).or_else(|| self.fallback_url.clone()).ok_or_else(|| {
            status(
                ErrorCode::Unavailable,
                format!("the {} service has not started yet; try again shortly", self.service),
            )
        })
    }

    /// The channel, or `UNAVAILABLE` while the service's address is not known yet.
    pub fn channel(&self) -> Result<Channel, Status> {
        let mut cached = self.cached.lock();
        if let Some(channel) = cached.as_ref() {
            return Ok(channel.clone());
        }
        let url = self.url()?;
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|error| status(ErrorCode::Internal, format!("invalid URL {url} for {}: {error}", self.service)))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.request_timeout)
            .connect_lazy();
        *cached = Some(channel.clone());
        Ok(channel)
    }
}
