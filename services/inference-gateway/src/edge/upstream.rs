//! The one way the edge calls an upstream service: an [`Upstream`] holds the lazily connected
//! channel to one service and the constructor of its tonic client. `client()?` answers 503
//! `unavailable` while the service has not started; every RPC's `tonic::Status` becomes an
//! [`ApiError`] through `?` (see `edge::error`). Reads that honour the signed caller headers
//! pass them through with [`with_caller`].

use axum::http::HeaderMap;
use openledger_runtime::clients::ServiceChannel;
use tonic::transport::Channel;

use super::error::ApiError;

/// One upstream service, as the state of its routes.
pub struct Upstream<C> {
    channel: ServiceChannel,
    connect: fn(Channel) -> C,
}

impl<C> Clone for Upstream<C> {
    fn clone(&self) -> Self {
        Self { channel: self.channel.clone(), connect: self.connect }
    }
}

impl<C> Upstream<C> {
    /// `connect` is the tonic client's `new`, e.g. `LedgerServiceClient::new`.
    pub fn new(channel: ServiceChannel, connect: fn(Channel) -> C) -> Self {
        Self { channel, connect }
    }

    /// A client over the shared channel (cheap: channels are reused).
    pub fn client(&self) -> Result<C, ApiError> {
        Ok((self.connect)(self.channel.channel()?))
    }
}

/// A request carrying the caller headers (if any) of the REST request.
pub fn with_caller<T>(message: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for name in openledger_signing::headers::CALLER {
        if let Some(value) = headers.get(name).and_then(|value| value.to_str().ok()).and_then(|v| v.parse().ok()) {
            request.metadata_mut().insert(name, value);
        }
    }
    request
}

#[cfg(test)]
pub(crate) mod testing {
    use openledger_core::{Config, ServiceKind};
    use openledger_runtime::{Endpoints, clients::ServiceChannel};

    /// Serves `routes` (a scripted or real upstream service) on a free local port and answers
    /// the channel a route's [`super::Upstream`] is built on, as `kind`.
    pub(crate) async fn serve(kind: ServiceKind, routes: tonic::service::Routes) -> ServiceChannel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        ServiceChannel::new(kind, Some(format!("http://{addr}")), &Config::default(), Endpoints::default())
    }
}
