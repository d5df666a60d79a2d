//! The REST edge's contract as a stranger tests it: schemathesis (every check, its stateful
//! phase following the document's links) against `/openapi.json` on `openledger dev`. Any
//! contract failure or 5xx fails the test with schemathesis' report.

use std::process::Command;

use openledger_core::ServiceKind;

use crate::support::Platform;

#[tokio::test]
async fn schemathesis_finds_no_contract_failure_on_dev() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut platform = Platform::spawn::<&str>(&["--data-dir", &data_dir.path().display().to_string(), "dev"], &[]);
    let rest = platform.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    platform.wait_ready(rest).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/schemathesis.sh");
    let run =
        tokio::task::spawn_blocking(move || Command::new("bash").arg(script).arg(format!("http://{rest}")).output())
            .await
            .expect("join")
            .expect("run scripts/schemathesis.sh");
    assert!(
        run.status.success(),
        "schemathesis found contract failures ({}):\n{}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(platform.is_running(), "dev survived the run; stderr:\n{}", platform.stderr());
}
