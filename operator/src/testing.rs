//! A scripted Kubernetes API server for controller tests, in the style of kube-rs's
//! controller-rs fixtures: a [`kube::Client`] whose requests reach a script of expected
//! exchanges. Each request must be the next one expected (method and path, query parts if
//! given); its JSON body can be checked; the script answers with a given body or echoes the
//! request's. [`Server::finish`] fails the test when an expected request never came or an
//! unexpected one did, and returns every request for further checks (and counting).

use std::fmt;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

type Check = Box<dyn Fn(&Value) + Send>;

/// One expected request and its answer.
pub struct Expect {
    method: Method,
    path: String,
    query: Vec<String>,
    status: StatusCode,
    answer: Answer,
    check: Option<Check>,
}

enum Answer {
    Json(Value),
    /// The request's body (what a create returns, near enough).
    Echo,
    /// The object given, with the request's body merged into it (JSON merge patch): what a
    /// patch of that object returns.
    Merged(Value),
}

impl Expect {
    fn new(method: Method, path: impl Into<String>) -> Self {
        let status = if method == Method::POST { StatusCode::CREATED } else { StatusCode::OK };
        Self { method, path: path.into(), query: Vec::new(), status, answer: Answer::Echo, check: None }
    }
    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }
    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }
    pub fn patch(path: impl Into<String>) -> Self {
        Self::new(Method::PATCH, path)
    }
    pub fn put(path: impl Into<String>) -> Self {
        Self::new(Method::PUT, path)
    }
    pub fn delete(path: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path)
    }
    /// The query string must contain `part` (e.g. `fieldManager=openledger-operator`).
    pub fn query(mut self, part: &str) -> Self {
        self.query.push(part.to_owned());
        self
    }
    /// Answers `status` with `body`.
    pub fn respond(mut self, status: u16, body: Value) -> Self {
        self.status = StatusCode::from_u16(status).expect("an HTTP status");
        self.answer = Answer::Json(body);
        self
    }
    /// Answers 200 with `body`.
    pub fn returns(self, body: Value) -> Self {
        self.respond(200, body)
    }
    /// Answers 404 with the API server's `Status` body.
    pub fn not_found(self) -> Self {
        self.respond(404, status_body(404, "NotFound", "not found"))
    }
    /// Answers 409 with the API server's `Status` body.
    pub fn conflict(self) -> Self {
        self.respond(409, status_body(409, "AlreadyExists", "already exists"))
    }
    /// Answers 200 with `object` patched by the request's body (RFC 7386 merge).
    pub fn merged_into(mut self, object: Value) -> Self {
        self.status = StatusCode::OK;
        self.answer = Answer::Merged(object);
        self
    }
    /// Runs `check` on the request's JSON body (`null` without one).
    pub fn check(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(check));
        self
    }
}

impl fmt::Debug for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if !self.query.is_empty() {
            write!(f, "?…{}", self.query.join("…"))?;
        }
        Ok(())
    }
}

/// A `Status` as the API server answers errors.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": message, "metadata": {}})
}

/// One request the script received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Recorded {
    /// Whether the request changed something (anything but a GET).
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose requests go to the script, and the unstarted script's end of it.
pub fn pair() -> (kube::Client, Script) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), Script { handle })
}

/// The server end, before its script runs.
pub struct Script {
    handle: Handle,
}

impl Script {
    /// Serves `expected` in order in a task.
    pub fn run(self, expected: Vec<Expect>) -> Server {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(self.handle, expected, stopped));
        Server { stop, task }
    }
}

/// The running script.
pub struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Outcome>,
}

struct Outcome {
    received: Vec<Recorded>,
    missing: Vec<String>,
    unexpected: Vec<String>,
}

impl Server {
    /// Ends the script: panics when an expected request did not come or another one did;
    /// returns every request received.
    pub async fn finish(self) -> Vec<Recorded> {
        // Called once the code under test returned: every request it made was answered (a
        // request still queued is served first: the loop prefers requests over the stop).
        let _ = self.stop.send(());
        let outcome = self.task.await.expect("the script task ran");
        assert!(outcome.unexpected.is_empty(), "unexpected requests: {:?}", outcome.unexpected);
        assert!(outcome.missing.is_empty(), "expected requests that never came: {:?}", outcome.missing);
        outcome.received
    }
}

async fn serve(mut handle: Handle, expected: Vec<Expect>, mut stopped: oneshot::Receiver<()>) -> Outcome {
    let mut outcome = Outcome { received: Vec::new(), missing: Vec::new(), unexpected: Vec::new() };
    let mut expected = expected.into_iter();
    let mut next = expected.next();
    loop {
        let (request, respond) = tokio::select! {
            biased;
            request = handle.next_request() => match request {
                Some(request) => request,
                None => break,
            },
            _ = &mut stopped => break,
        };
        let (parts, body) = request.into_parts();
        let bytes = http_body_util::BodyExt::collect(body).await.map(|body| body.to_bytes()).unwrap_or_default();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        let recorded = Recorded {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            body,
        };
        let described = format!("{} {}?{}", recorded.method, recorded.path, recorded.query);
        let matches = next.as_ref().is_some_and(|expect| {
            expect.method == recorded.method
                && expect.path == recorded.path
                && expect.query.iter().all(|part| recorded.query.contains(part.as_str()))
        });
        if !matches {
            let wanted = next.as_ref().map_or("nothing more".to_owned(), |expect| format!("{expect:?}"));
            let message = format!("{described} (expected {wanted})");
            outcome.unexpected.push(message.clone());
            respond.send_response(json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &status_body(500, "Unexpected", &message),
            ));
            continue;
        }
        let expect = next.take().expect("matched");
        // A failed check answers 500 at once (the code under test sees an error instead of
        // waiting for an answer that never comes) and fails `finish`; its message is printed.
        if let Some(check) = &expect.check
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&recorded.body))).is_err()
        {
            let message = format!("{described}: its check failed (see the panic above)");
            respond.send_response(json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &status_body(500, "CheckFailed", &message),
            ));
            outcome.unexpected.push(message);
            next = expected.next();
            continue;
        }
        let answer = match expect.answer {
            Answer::Json(value) => value,
            Answer::Echo => recorded.body.clone(),
            Answer::Merged(mut object) => {
                merge(&mut object, &recorded.body);
                object
            }
        };
        respond.send_response(json_response(expect.status, &answer));
        outcome.received.push(recorded);
        next = expected.next();
    }
    outcome.missing = next.into_iter().chain(expected).map(|expect| format!("{expect:?}")).collect();
    outcome
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("JSON serializes")))
        .expect("a response")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
    use kube::{Api, api::PostParams};

    use super::*;

    #[tokio::test]
    async fn a_failed_check_answers_at_once_and_fails_the_script() {
        let (client, script) = pair();
        let server = script.run(vec![
            Expect::post("/api/v1/namespaces/ns/configmaps")
                .check(|body| assert_eq!(body["metadata"]["name"], "other")),
        ]);
        let created = Api::<ConfigMap>::namespaced(client, "ns")
            .create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: ObjectMeta { name: Some("mine".into()), ..ObjectMeta::default() },
                    ..ConfigMap::default()
                },
            )
            .await;
        assert!(matches!(created, Err(kube::Error::Api(status)) if status.code == 500));
        let finished = tokio::spawn(server.finish()).await;
        assert!(finished.is_err(), "finish fails the test");
    }
}
