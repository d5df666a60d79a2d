//! `openledger operator`: the Kubernetes operator (`run`) and its CRDs (`crdgen`).

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

#[derive(Subcommand)]
pub enum OperatorCommand {
    /// Write the CRDs derived from the operator's types as YAML (into the Helm chart by default)
    Crdgen {
        /// Directory of the CRD files
        #[arg(long, default_value = "charts/openledger/crds")]
        dir: PathBuf,
        /// Write nothing: fail when the files differ from what the types derive (CI's drift check)
        #[arg(long)]
        check: bool,
    },
}

pub fn crdgen(dir: PathBuf, check: bool) -> ExitCode {
    if check {
        let drifted = openledger_operator::crdgen::drift(&dir);
        if drifted.is_empty() {
            println!("the CRDs in {} match operator/src/crd", dir.display());
            return ExitCode::SUCCESS;
        }
        for path in drifted {
            eprintln!("error: {} differs from what operator/src/crd derives", path.display());
        }
        eprintln!("run `openledger operator crdgen` and commit the result");
        return ExitCode::FAILURE;
    }
    match openledger_operator::crdgen::write(&dir) {
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: cannot write the CRDs into {}: {error}", dir.display());
            ExitCode::FAILURE
        }
    }
}
